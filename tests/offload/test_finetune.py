"""elma finetune: records become labelled examples (a person's correction first, else the server's answer),
original data is mixed in, a tiny model trains a few steps, and the gate publishes or refuses."""

import json
import uuid

import pytest

pytest.importorskip("torch")
pytest.importorskip("sqlalchemy")

from conftest import PASSAGES, make_tiny_model_dir, squad_payload  # noqa: E402

from elma.cli import main as elma_main  # noqa: E402
from elma.offload.finetune import record_examples  # noqa: E402
from elma.offload.server import RecordStore  # noqa: E402

CONTEXT = PASSAGES[0][0]


def row(question, server_answer, corrected=None, context=CONTEXT):
    return {"record_id": str(uuid.uuid4()), "question": question, "context": context, "local_answer": "",
            "local_no_answer": True, "exit_layer": 3, "num_layers": 3, "unsolved": True, "server_answer": server_answer,
            "corrected_answer": corrected, "created_at_unix_s": 1.0}


def test_record_examples_labels():
    rows = [row("What is the capital of France?", "Paris"),
            row("Which river?", "the Loire", corrected="Seine"),  # a person's correction wins
            row("Who won the cup?", ""),  # the server said no answer
            row("Not answered yet?", None),  # skipped: no label
            row("Hallucinated?", "Berlin")]  # skipped: not in the context
    paragraphs, skipped = record_examples(rows)
    assert skipped == 2 and len(paragraphs) == 3
    qas = [p["qas"][0] for p in paragraphs]
    assert qas[0]["answers"] == [{"text": "Paris", "answer_start": 0}]
    assert qas[1]["answers"][0]["text"] == "Seine" and CONTEXT[qas[1]["answers"][0]["answer_start"]:].startswith("Seine")
    assert qas[2]["is_impossible"] and qas[2]["answers"] == []


@pytest.fixture
def setup(tmp_path):
    model = make_tiny_model_dir(tmp_path / "base", "bert")
    db = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    store = RecordStore(db)
    store.store("jetson-01", [{k: v for k, v in r.items() if k != "corrected_answer"} for r in
                              [row("What is the capital of France?", "Paris"), row("Which river?", "Seine"),
                               row("Who won?", "")]])
    store.close()
    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad_payload(copies=2)))
    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps(squad_payload(copies=1)))
    argv = ["finetune", "--errors", db, "--base", str(model), "--train-file", str(train), "--heldout", str(heldout),
            "--max-steps", "2", "--batch-size", "4", "--threads", "1", "--original-per-error", "1"]
    return tmp_path, argv


def test_publishes_when_not_worse_and_refuses_otherwise(setup, capsys):
    tmp_path, argv = setup
    out = tmp_path / "new"
    assert elma_main(argv + ["-o", str(out), "--min-f1-gain", "-1000"]) == 0
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["published"] and report["error_examples"] == 3 and report["original_examples"] == 3
    assert report["train_steps"] == 2 and len(report["new_exits"]) == 3
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()
    assert not (tmp_path / "new.work").exists()
    assert "published" in capsys.readouterr().out

    refused = tmp_path / "refused"
    assert elma_main(argv + ["-o", str(refused), "--min-f1-gain", "1000"]) == 1
    assert not refused.exists() and (tmp_path / "refused.work" / "finetune_report.json").is_file()
    assert "not published" in capsys.readouterr().out

    assert elma_main(argv + ["-o", str(out)]) == 2  # never overwrites a published model
    assert "exists" in capsys.readouterr().err


def test_no_usable_records_is_one_clear_error(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "base", "bert")
    db = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    RecordStore(db).close()
    (tmp_path / "h.json").write_text(json.dumps(squad_payload(copies=1)))
    code = elma_main(["finetune", "--errors", db, "--base", str(model), "--train-file", str(tmp_path / "h.json"),
                      "--heldout", str(tmp_path / "h.json"), "-o", str(tmp_path / "new")])
    assert code == 2 and "no usable error records" in capsys.readouterr().err
