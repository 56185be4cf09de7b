"""elma-ask --split N|auto against a real offload server on loopback (tiny bundle): a fixed split offloads what is
unsolved there and the last layer never offloads; auto plays each split, learns from measured costs, and keeps its
state across runs; flag errors and a damaged state file exit 2 in one line."""

import io
import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from conftest import PASSAGES, PipedStdin, loopback_offload_server  # noqa: E402

from elma.ask_cli import main  # noqa: E402
from elma.offload.queue import RecordQueue  # noqa: E402
from elma.offload.split_ask import model_fingerprint  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

CONTEXT, QAS = PASSAGES[0]
QUESTION = QAS[0][0]
TOKEN = "split-token"
LAYERS = 3  # the tiny bert


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return str(tiny_bundles.bundle("bert"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """The real server app (token, body and field checks), whose answerer records what it was asked."""
    asked = []

    def watch(answerer):
        def answer(question, context):
            asked.append((question, context))
            return answerer(question, context)
        return answer

    with loopback_offload_server(bundle, tmp_path_factory.mktemp("srv") / "records.sqlite3", TOKEN, watch) as (
            srv, _, answerer):
        yield srv, asked, answerer


@pytest.fixture
def ask(capsys, tmp_path, bundle, server):
    token_file = tmp_path / "device.token"
    token_file.write_text(TOKEN)
    queue = tmp_path / "queue.sqlite3"

    def call(argv, stdin="", with_server=True):
        extra = ["--model", bundle]
        if with_server:
            extra += ["--server", server[0].url, "--queue", str(queue), "--token-file", str(token_file),
                      "--deadline-ms", "5000"]
        out = io.StringIO()
        try:
            code = main(argv + extra, PipedStdin(stdin), out)
        except SystemExit as e:
            code = e.code
        return code, out.getvalue(), capsys.readouterr().err
    call.queue = queue
    return call


def test_a_fixed_split_offloads_what_is_unsolved_there(ask, server):
    _, asked, answerer = server
    before = len(asked)
    code, out, err = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--split", "1"])
    record = json.loads(out)
    assert code == 0, err
    assert (record["split"], record["split_source"], record["exit_layer"]) == (1, "fixed", 1)
    assert record["offloaded"] and record["offload_reason"] == "unsolved" and len(asked) == before + 1
    assert record["text"] == answerer(QUESTION, CONTEXT)["text"] and 0 < record["exit_confidence"] <= 1


def test_the_last_layer_as_split_never_offloads(ask, server):
    _, asked, _ = server
    before = len(asked)
    code, out, err = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--split", str(LAYERS)])
    record = json.loads(out)
    assert code == 0, err
    assert record["exit_layer"] == LAYERS and record["unsolved"] and not record["offloaded"] and not record["deferred"]
    assert len(asked) == before and RecordQueue(ask.queue).count() == 0
    code, out, _ = ask([QUESTION, "--context", CONTEXT, "--policy", "maxprob:1", "--split", str(LAYERS)])
    assert code == 0 and f"split {LAYERS} (fixed)" in out and "offloaded" not in out


def test_auto_plays_each_split_learns_and_keeps_its_state_across_runs(ask, tmp_path, bundle):
    state = tmp_path / "split" / "state.json"
    played = []
    for _ in range(LAYERS):  # a fresh run each time: the state is read back from the file
        code, out, err = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--split", "auto",
                              "--split-state", str(state)])
        assert code == 0, err
        record = json.loads(out)
        assert record["split_source"] == "learnt"
        played.append(record["split"])
        saved = json.loads(state.read_text())
        assert saved["bandit"]["rounds"] == len(played) and saved["fingerprint"] == model_fingerprint(bundle)
    assert played == [1, 2, 3]  # UCB1: every split once, the shallowest first
    bandit = saved["bandit"]
    assert bandit["plays"] == [1, 1, 1] and bandit["n"] == [3, 2, 1]  # side observations reach the shallower splits
    costs = bandit["costs"]
    assert costs["offload_n"] == 2 and costs["offload_sum_ms"] > 0  # two offloads measured (splits 1 and 2)
    assert costs["step_n"] == [3, 2, 1] and all(ms > 0 for ms in costs["step_sum_ms"])
    assert RecordQueue(ask.queue).count() == 2


def test_auto_in_interactive_mode_learns_from_every_question(ask, tmp_path):
    state = tmp_path / "state.json"
    code, out, err = ask(["-i", "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--split", "auto",
                          "--split-state", str(state)], stdin="".join(q + "\n" for q, _ in QAS * 2))
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["split"] for r in records[:LAYERS]] == [1, 2, 3] and len(records) == 4
    assert json.loads(state.read_text())["bandit"]["rounds"] == 4


def test_a_damaged_state_file_exits_2_in_one_line_and_is_kept(ask, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{half a state")
    code, out, err = ask([QUESTION, "--context", CONTEXT, "--policy", "maxprob:1", "--split", "auto", "--split-state",
                          str(state)])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "not a readable split state" in err and "remove it to learn afresh" in err
    assert state.read_text() == "{half a state"


@pytest.mark.parametrize("argv, match, with_server", [
    (["--split", "0"], "at least 1", True),
    (["--split", "deep"], "auto or a layer number", True),
    (["--split", "2"], "needs --server", False),
    (["--split", "2", "--max-layer", "2"], "give one", True),
    (["--split-state", "s.json"], "needs --split auto", True),
    (["--split", "2", "--split-state", "s.json"], "needs --split auto", True),
    (["--split", "4"], "must be in 1..3 or auto", True),
    (["--split", "auto", "--policy", "none"], "can be unsure", True),
])
def test_split_flag_errors_exit_2(ask, argv, match, with_server):
    code, out, err = ask([QUESTION, "--context", CONTEXT] + argv, with_server=with_server)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_exit_confidence_is_the_smaller_max_probability_at_the_exit(bundle):
    """What the bandit weighs a local answer by: min(max start prob, max end prob) of the exit that answered."""
    import numpy as np

    from elma.runtime.stats import max_prob

    with Runtime.open(bundle) as rt:
        (window, logits), = rt.record_exits([(QUESTION, CONTEXT)])[0]
        mask = np.array([i == 0 or o is not None for i, o in enumerate(window.offsets)])
        for layer in (1, 2, 3):
            answer = rt.ask(QUESTION, CONTEXT, policy=f"static:{layer}")
            expected = min(max_prob(logits[layer - 1, 0], mask), max_prob(logits[layer - 1, 1], mask))
            assert answer.exit_layer == layer and answer.exit_confidence == pytest.approx(float(expected), rel=1e-5)
