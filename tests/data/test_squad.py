"""SQuAD loading: valid 1.1 / 2.0 files load exactly; every malformed file is a
one-line DataError that names the file (and the question id when there is one)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elma.data.squad import Answer, load_squad, parse_squad, read_json
from elma.errors import DataError

REPO = Path(__file__).resolve().parents[2]

CTX_A = "The Normans gave their name to Normandy, a region in France."
CTX_B = "Rollo was the leader of the Norse raiders. He swore fealty to King Charles III."


def squad2() -> dict:
    """A small valid SQuAD 2.0 document (fresh copy each call)."""
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "Normans",
                "paragraphs": [
                    {
                        "context": CTX_A,
                        "qas": [
                            {"id": "q-a1", "question": "What region is named after the Normans?",
                             "answers": [{"text": "Normandy", "answer_start": CTX_A.index("Normandy")},
                                         {"text": "Normandy, a region in France",
                                          "answer_start": CTX_A.index("Normandy")}],
                             "is_impossible": False},
                            {"id": "q-a2", "question": "What region is named after the Danes?",
                             "answers": [], "plausible_answers": [{"text": "Normandy", "answer_start": 31}],
                             "is_impossible": True},
                        ],
                    }
                ],
            },
            {
                "title": "Rollo",
                "paragraphs": [
                    {
                        "context": CTX_B,
                        "qas": [
                            {"id": "q-b1", "question": "Who led the Norse raiders?",
                             "answers": [{"text": "Rollo", "answer_start": 0}], "is_impossible": False},
                        ],
                    }
                ],
            },
        ],
    }


def squad11() -> dict:
    """SQuAD 1.1: no is_impossible anywhere."""
    doc = squad2()
    del doc["data"][0]["paragraphs"][0]["qas"][1]
    for art in doc["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                qa.pop("is_impossible", None)
    doc["version"] = "1.1"
    return doc


def write(tmp_path: Path, payload, name: str = "data.json") -> Path:
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif isinstance(payload, str):
        path.write_text(payload, encoding="utf-8")
    else:
        path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_squad(path)
    msg = str(info.value)
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------- #
# valid files
# --------------------------------------------------------------------------- #
def test_squad2_loads_every_question_in_file_order(tmp_path):
    exs = load_squad(write(tmp_path, squad2()))
    assert [e.qid for e in exs] == ["q-a1", "q-a2", "q-b1"]
    a1, a2, b1 = exs
    assert (a1.title, a1.context, a1.is_impossible) == ("Normans", CTX_A, False)
    assert a1.question == "What region is named after the Normans?"
    assert a1.answers == (Answer("Normandy", 31), Answer("Normandy, a region in France", 31))
    assert a1.answer_texts == ["Normandy", "Normandy, a region in France"]
    # unanswerable: no answers, plausible_answers are not answers
    assert a2.is_impossible and a2.answers == () and a2.answer_texts == []
    assert (b1.title, b1.answers) == ("Rollo", (Answer("Rollo", 0),))


def test_squad11_without_is_impossible_is_all_answerable(tmp_path):
    exs = load_squad(write(tmp_path, squad11()))
    assert [e.qid for e in exs] == ["q-a1", "q-b1"]
    assert not any(e.is_impossible for e in exs)
    assert all(e.answers for e in exs)


def test_answer_start_counts_characters_not_bytes(tmp_path):
    ctx = "Zürich and Genève are Swiss cities; Zürich is larger."
    doc = {"data": [{"title": "CH", "paragraphs": [{"context": ctx, "qas": [
        {"id": "u1", "question": "Which is larger?",
         "answers": [{"text": "Zürich", "answer_start": ctx.rindex("Zürich")}]}]}]}]}
    (ex,) = load_squad(write(tmp_path, doc))
    a = ex.answers[0]
    assert ex.context[a.answer_start:a.answer_start + len(a.text)] == "Zürich"
    assert a.answer_start == ctx.rindex("Zürich")


def test_impossible_question_may_list_answers_but_gets_none(tmp_path):
    doc = squad2()
    qa = doc["data"][0]["paragraphs"][0]["qas"][1]
    qa["answers"] = [{"text": "Normandy", "answer_start": 31}]
    exs = load_squad(write(tmp_path, doc))
    assert exs[1].is_impossible and exs[1].answers == ()


def test_check_offsets_false_accepts_shifted_answer(tmp_path):
    doc = squad2()
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    path = write(tmp_path, doc)
    load_error(path)  # strict by default
    exs = load_squad(path, check_offsets=False)
    assert exs[2].answers == (Answer("Rollo", 3),)


def test_unlabelled_questions_load_only_when_labels_are_not_required():
    doc = squad2()
    del _qa(doc, art=1)["answers"]  # no answers key
    _qa(doc, art=0, q=0)["answers"] = []  # answerable, no answers
    with pytest.raises(DataError, match="answerable question with no answers"):
        parse_squad(copy.deepcopy(doc))
    examples = {e.qid: e for e in parse_squad(doc, labels=False)}
    assert examples["q-b1"].answers == () and not examples["q-b1"].is_impossible
    assert examples["q-a1"].answers == () and not examples["q-a1"].is_impossible
    assert examples["q-a2"].is_impossible, "labelled questions keep their labels"
    bad = squad2()
    _qa(bad, art=1)["answers"][0]["answer_start"] = -1
    with pytest.raises(DataError, match="outside the context"):
        parse_squad(bad, labels=False)


def test_read_json_and_parse_squad_agree_with_load_squad(tmp_path):
    path = write(tmp_path, squad2())
    assert parse_squad(read_json(path), str(path)) == load_squad(path)


# --------------------------------------------------------------------------- #
# malformed documents
# --------------------------------------------------------------------------- #
def _qa(doc, art=0, para=0, q=0):
    return doc["data"][art]["paragraphs"][para]["qas"][q]


def _del(getter, key):
    def mutate(doc):
        del getter(doc)[key]
    return mutate


def _set(getter, key, value):
    def mutate(doc):
        getter(doc)[key] = value
    return mutate


def _dup_id(doc):
    _qa(doc, art=1)["id"] = "q-a1"


def _no_questions(doc):
    doc["data"] = [{"title": "Empty", "paragraphs": [{"context": "Nothing here.", "qas": []}]}]


# (mutation, expected words in the message, question id the message must name or None)
MALFORMED = {
    "missing data": (lambda d: d.pop("data"), "missing key 'data'", None),
    "data not a list": (_set(lambda d: d, "data", {"x": 1}), "'data' must be list", None),
    "missing paragraphs": (_del(lambda d: d["data"][1], "paragraphs"), "missing key 'paragraphs'", None),
    "missing context": (_del(lambda d: d["data"][1]["paragraphs"][0], "context"), "missing key 'context'", None),
    "missing qas": (_del(lambda d: d["data"][1]["paragraphs"][0], "qas"), "missing key 'qas'", None),
    "missing id": (_del(lambda d: _qa(d, art=1), "id"), "missing key 'id'", None),
    "id not a string": (_set(lambda d: _qa(d, art=1), "id", 7), "'id' must be str", None),
    "missing question": (_del(lambda d: _qa(d, art=1), "question"), "missing key 'question'", "q-b1"),
    "empty question": (_set(lambda d: _qa(d, art=1), "question", "  "), "empty question", "q-b1"),
    "missing answers": (_del(lambda d: _qa(d, art=1), "answers"), "missing key 'answers'", "q-b1"),
    "missing text": (_del(lambda d: _qa(d, art=1)["answers"][0], "text"), "missing key 'text'", "q-b1"),
    "missing answer_start": (_del(lambda d: _qa(d, art=1)["answers"][0], "answer_start"),
                             "missing key 'answer_start'", "q-b1"),
    "answer_start a string": (_set(lambda d: _qa(d, art=1)["answers"][0], "answer_start", "0"),
                              "'answer_start' must be int", "q-b1"),
    "answer_start a bool": (_set(lambda d: _qa(d, art=1)["answers"][0], "answer_start", True),
                            "'answer_start' must be int", "q-b1"),
    "text not at answer_start": (_set(lambda d: _qa(d)["answers"][1], "answer_start", 32),
                                 "does not occur at answer_start 32", "q-a1"),
    "answer_start past the end": (_set(lambda d: _qa(d, art=1)["answers"][0], "answer_start", len(CTX_B) - 2),
                                  "outside the context", "q-b1"),
    "answer_start negative": (_set(lambda d: _qa(d, art=1)["answers"][0], "answer_start", -1),
                              "outside the context", "q-b1"),
    "empty answer text": (_set(lambda d: _qa(d, art=1)["answers"][0], "text", " "), "empty answer text", "q-b1"),
    "is_impossible not bool": (_set(lambda d: _qa(d), "is_impossible", "false"), "is_impossible", "q-a1"),
    "empty context": (_set(lambda d: d["data"][1]["paragraphs"][0], "context", " \n "), "empty context", "q-b1"),
    "duplicate id": (_dup_id, "duplicate question id", "q-a1"),
    "answerable without answers": (_set(lambda d: _qa(d, art=1), "answers", []), "no answers", "q-b1"),
    "no questions": (_no_questions, "no questions", None),
    "no articles": (_set(lambda d: d, "data", []), "no questions", None),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_document_names_file_and_question(tmp_path, case):
    mutate, words, qid = MALFORMED[case]
    doc = squad2()
    mutate(doc)
    msg = load_error(write(tmp_path, doc, "bad-squad.json"))
    assert words in msg
    if qid is not None:
        assert repr(qid) in msg, f"message does not name question {qid}: {msg}"


def test_problem_in_second_article_does_not_return_first(tmp_path):
    """Nothing is returned half-read: one bad question anywhere fails the whole file."""
    doc = squad2()
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"] = []
    load_error(write(tmp_path, doc))


def test_parse_squad_names_the_source_given(tmp_path):
    doc = squad2()
    del _qa(doc)["question"]
    with pytest.raises(DataError, match=r"^my-source\.json: question 'q-a1'"):
        parse_squad(copy.deepcopy(doc), "my-source.json")


# --------------------------------------------------------------------------- #
# unreadable files
# --------------------------------------------------------------------------- #
def test_missing_file(tmp_path):
    msg = load_error(tmp_path / "nope.json")
    assert "no such SQuAD file" in msg


def test_non_utf8_bytes(tmp_path):
    raw = json.dumps(squad2()).encode("utf-8").replace(b"Rollo was", b"R\xf6llo was")
    msg = load_error(write(tmp_path, raw))
    bad_byte = raw.index(b"\xf6")
    assert "not UTF-8" in msg and f"byte {bad_byte}" in msg


def test_invalid_json_reports_line_and_column(tmp_path):
    msg = load_error(write(tmp_path, '{"data": [\n  {"title": "x",,}\n]}'))
    assert "invalid JSON at line 2 column" in msg


def test_empty_file(tmp_path):
    msg = load_error(write(tmp_path, b""))
    assert "invalid JSON" in msg


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="cannot read SQuAD file"):
        load_squad(tmp_path)


def test_read_json_uses_the_given_description(tmp_path):
    with pytest.raises(DataError, match="no such predictions file"):
        read_json(tmp_path / "p.json", "predictions file")


# --------------------------------------------------------------------------- #
# CLI: one line on stderr, no traceback
# --------------------------------------------------------------------------- #
def _bad_missing_question(tmp_path):
    doc = squad2()
    del _qa(doc, art=1)["question"]
    return write(tmp_path, doc, "BAD.json")


@pytest.mark.parametrize("make_bad", [
    pytest.param(_bad_missing_question, id="missing-question"),
    pytest.param(lambda p: write(p, "{not json", "BAD.json"), id="invalid-json"),
    pytest.param(lambda p: write(p, b"\xff\xfe{}", "BAD.json"), id="not-utf8"),
    pytest.param(lambda p: p / "BAD.json", id="missing-file"),
])
def test_cli_evaluate_bad_file_is_one_line_error(tmp_path, make_bad):
    bad = make_bad(tmp_path)
    pred = write(tmp_path, {"q-a1": "Normandy", "q-a2": "", "q-b1": "Rollo"}, "PRED.json")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "elma.cli", "evaluate", str(bad), str(pred)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("elma evaluate: error:")
    assert "BAD.json" in lines[0]
    assert proc.stdout == ""
