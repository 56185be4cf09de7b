"""elma-ask --server: --json says offloaded or deferred; a dead server costs at most the deadline; interactive
mode uploads queued records in the background; flag errors exit 2."""

import io
import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from conftest import PASSAGES, PipedStdin, loopback_offload_server  # noqa: E402

from elma.ask_cli import main  # noqa: E402
from elma.offload.queue import RecordQueue  # noqa: E402
from elma.offload.server import free_port  # noqa: E402

CONTEXT, QAS = PASSAGES[0]
QUESTION = QAS[0][0]
TOKEN = "ask-cli-token"


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return str(tiny_bundles.bundle("bert"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with loopback_offload_server(bundle, tmp_path_factory.mktemp("srv") / "records.sqlite3", TOKEN) as srv:
        yield srv


@pytest.fixture
def ask(capsys, tmp_path, bundle):
    token_file = tmp_path / "device.token"
    token_file.write_text(TOKEN)
    queue = tmp_path / "queue.sqlite3"

    def call(argv, stdin=""):
        out = io.StringIO()
        try:
            code = main(argv + ["--model", bundle, "--queue", str(queue), "--token-file", str(token_file)]
                        if "--server" in argv else argv + ["--model", bundle], PipedStdin(stdin), out)
        except SystemExit as e:
            code = e.code
        return code, out.getvalue(), capsys.readouterr().err
    call.queue = queue
    return call


def test_json_says_offloaded_or_local(ask, server):
    srv, _, answerer = server
    code, out, err = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--server", srv.url,
                          "--deadline-ms", "5000"])
    record = json.loads(out)
    assert code == 0 and record["offloaded"] and not record["deferred"] and record["offload_reason"] == "unsolved"
    assert record["text"] == answerer(QUESTION, CONTEXT)["text"] and record["record_id"] and record["unsolved"]
    code, out, _ = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "static:1", "--server", srv.url])
    record = json.loads(out)
    assert code == 0 and not record["offloaded"] and not record["deferred"] and record["record_id"] is None
    assert RecordQueue(ask.queue).count() == 1


def test_a_dead_server_gives_the_local_answer_deferred_within_the_deadline(ask):
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, _ = ask([QUESTION, "--context", CONTEXT, "--json", "--policy", "maxprob:1", "--server", dead,
                        "--deadline-ms", "200"])
    record = json.loads(out)
    assert code == 0 and record["deferred"] and not record["offloaded"] and record["text"] == record["local_text"]
    assert record["offload_ms"] < 300
    code, out, _ = ask([QUESTION, "--context", CONTEXT, "--policy", "maxprob:1", "--server", dead, "--deadline-ms", "200"])
    assert code == 0 and "deferred (unsolved)" in out
    assert RecordQueue(ask.queue).count(pending_only=True) == 2


def test_interactive_mode_uploads_in_the_background(ask, server):
    srv, store, _ = server
    queue = RecordQueue(ask.queue)
    rec = queue.add("queued while offline", CONTEXT, "", 3, 3, True)
    queue.close()
    code, out, _ = ask(["-i", "--context", CONTEXT, "--json", "--policy", "static:1", "--server", srv.url], stdin=QUESTION + "\n")
    assert code == 0 and len(out.splitlines()) == 1
    assert rec.record_id in {r["record_id"] for r in store.all()}
    assert RecordQueue(ask.queue).count(pending_only=True) == 0


@pytest.mark.parametrize("extra, match", [
    (["--server", "http://127.0.0.1:9"], None),  # filled in below: a missing token file
    (["--token-file", "x"], "need --server"),
    (["--deadline-ms", "5"], "need --server"),
])
def test_offload_flag_errors_exit_2(ask, bundle, capsys, tmp_path, extra, match):
    if match is None:
        code = main([QUESTION, "--context", CONTEXT, "--model", bundle, *extra, "--token-file", str(tmp_path / "nope")],
                    PipedStdin(""), io.StringIO())
        match = "cannot read the token file"
    else:
        code = main([QUESTION, "--context", CONTEXT, "--model", bundle, *extra], PipedStdin(""), io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_the_calibrated_default_decides_what_is_offloaded(server, bundle, tmp_path, capsys):
    """No --policy: the bundle's calibrated default runs (maxprob:1 is never confident, so the question is
    unsolved and offloaded); --policy none forces full depth, which is never unsolved, so nothing is offloaded."""
    import shutil

    from elma.runtime.bundle import update_manifest

    srv, _, answerer = server
    calibrated = shutil.copytree(bundle, tmp_path / "calibrated")
    update_manifest(calibrated, {"exit_thresholds": {"default": "maxprob:1", "calibration": {"n": 1}}})
    token_file = tmp_path / "device.token"
    token_file.write_text(TOKEN)
    common = [QUESTION, "--context", CONTEXT, "--json", "--model", str(calibrated), "--server", srv.url,
              "--token-file", str(token_file), "--queue", str(tmp_path / "q.sqlite3"), "--deadline-ms", "5000"]
    out = io.StringIO()
    assert main(common, PipedStdin(""), out) == 0
    record = json.loads(out.getvalue())
    assert (record["policy"], record["policy_source"]) == ("maxprob:1", "calibrated default")
    assert record["offloaded"] and record["offload_reason"] == "unsolved"
    assert record["text"] == answerer(QUESTION, CONTEXT)["text"]
    out = io.StringIO()
    assert main(common[:-2] + ["--policy", "none"], PipedStdin(""), out) == 0
    record = json.loads(out.getvalue())
    assert (record["policy"], record["policy_source"], record["offloaded"]) == ("none", "requested", False)
    out = io.StringIO()
    assert main([a for a in common if a != "--json"], PipedStdin(""), out) == 0
    assert "policy maxprob:1 (calibrated default)" in out.getvalue() and "offloaded (unsolved)" in out.getvalue()
    capsys.readouterr()
