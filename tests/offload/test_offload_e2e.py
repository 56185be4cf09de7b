"""End to end on loopback: uvicorn serving a tiny full-depth bundle, the device client over urllib.

Solvable questions stay local, unsolvable ones are offloaded and recorded; `elma sync --upload` stores them
once; with the server stopped mid-run the device keeps answering within its deadline and uploads everything
exactly once after the restart."""

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sqlalchemy")

from conftest import PASSAGES  # noqa: E402

from elma.cli import main as elma_main  # noqa: E402
from elma.offload.client import OffloadClient, OffloadConfig, post_json  # noqa: E402
from elma.offload.queue import RecordQueue  # noqa: E402
from elma.offload.server import (  # noqa: E402
    BackgroundServer,
    RecordStore,
    RuntimeAnswerer,
    ServeConfig,
    create_app,
    free_port,
    hash_token,
)
from elma.runtime.engine import Runtime  # noqa: E402

TOKEN = "jetson-01-token"
SOLVED, UNSOLVED = "static:1", "maxprob:1"  # a tiny random model is never 100% sure: maxprob:1 never exits
QUESTIONS = [(q, context) for context, qas in PASSAGES for q, _ in qas]


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return tiny_bundles.bundle("bert")


@pytest.fixture(scope="module")
def answerer(bundle):
    a = RuntimeAnswerer(Runtime.open(bundle, policy="none"))
    yield a
    a.close()


@pytest.fixture(scope="module")
def device(bundle):
    with Runtime.open(bundle, policy=SOLVED) as rt:
        yield rt


@pytest.fixture
def store(tmp_path):
    s = RecordStore(f"sqlite:///{tmp_path / 'server.sqlite3'}")
    yield s
    s.close()


def serve(answerer, store, port=0):
    app = create_app(ServeConfig(rate_per_s=1000, burst=1000), answerer, store, {hash_token(TOKEN): "jetson-01"})
    return BackgroundServer(app, port=port).start()


def test_unsolvable_questions_are_offloaded_recorded_and_synced_once(answerer, device, store, tmp_path):
    server = serve(answerer, store)
    try:
        queue = RecordQueue(tmp_path / "device.sqlite3")
        client = OffloadClient(OffloadConfig(server.url, token=TOKEN, deadline_ms=5000), queue)
        (q1, c1), (q2, c2) = QUESTIONS[0], QUESTIONS[1]
        solved = client.ask(device, q1, c1)
        assert not solved.offloaded and not solved.deferred and solved.record_id is None and solved.local.exit_layer == 1
        unsolved = client.ask(device, q2, c2, policy=UNSOLVED)
        full = answerer(q2, c2)
        assert unsolved.offloaded and unsolved.reason == "unsolved" and unsolved.attempts == 1
        assert unsolved.text == full["text"] and unsolved.local.unsolved
        [rec] = queue.all()
        assert rec.record_id == unsolved.record_id and rec.server_answer == full["text"] and rec.question == q2
        assert store.count() == 0  # /v1/answer stores nothing; the record travels with sync

        token_file = tmp_path / "device.token"
        token_file.write_text(TOKEN + "\n")
        argv = ["sync", "--server", server.url, "--token-file", str(token_file), "--queue", str(queue.path)]
        assert elma_main(argv) == 0  # without --upload: only reports the queue
        assert queue.count(pending_only=True) == 1
        assert elma_main(argv + ["--upload"]) == 0
        assert elma_main(argv + ["--upload"]) == 0  # nothing pending: nothing sent twice
        [row] = store.all()
        assert row["record_id"] == rec.record_id and row["device_id"] == "jetson-01" and row["unsolved"]
        assert row["server_answer"] == full["text"] and queue.count(pending_only=True) == 0
        token_file.write_text("wrong-token\n")
        queue.add("q", "c", "", 1, 3, True)
        assert elma_main(argv + ["--upload"]) == 3 and queue.count(pending_only=True) == 1  # HTTP 401: one line, exit 3
    finally:
        server.stop()


def test_server_stopped_mid_run_device_answers_in_time_and_uploads_exactly_once(answerer, device, store, tmp_path):
    port = free_port()
    server = serve(answerer, store, port)
    queue = RecordQueue(tmp_path / "device.sqlite3")
    config = OffloadConfig(f"http://127.0.0.1:{port}", token=TOKEN, deadline_ms=300, retries=2, backoff_ms=10)
    client = OffloadClient(config, queue)
    results = []
    try:
        for q, c in QUESTIONS[:2]:
            results.append(client.ask(device, q, c, policy=UNSOLVED))
    finally:
        server.stop()
    for q, c in QUESTIONS[2:]:  # the server is gone
        r = client.ask(device, q, c, policy=UNSOLVED)
        assert r.deferred and not r.offloaded and r.text == r.local.text
        assert r.offload_ms < config.deadline_ms + 100, r.offload_ms  # the queue write and the check fit in the slack
        results.append(r)
    assert sum(r.offloaded for r in results) >= 1  # the deadline is short on a busy box; the rest were deferred
    assert queue.count(pending_only=True) == len(QUESTIONS)

    server = serve(answerer, store, port)  # back, same address
    try:
        # A device that died after the server acknowledged a batch, before marking it: that batch goes again.
        first = queue.pending(2)
        reply = post_json(f"{server.url}/v1/records", {"records": [{k: v for k, v in r.to_dict().items() if k != "uploaded"}
                                                                    for r in first]}, TOKEN, 10.0)
        assert reply["stored_new"] == 2
        report = client.upload_pending()
        assert report.uploaded == len(QUESTIONS) and report.pending_left == 0 and report.stored_new == len(QUESTIONS) - 2
        rows = store.all()
        assert sorted(r["record_id"] for r in rows) == sorted(r.record_id for r in results)
        assert {r["question"] for r in rows} == {q for q, _ in QUESTIONS}
        assert client.upload_pending().uploaded == 0 and store.count() == len(QUESTIONS)
    finally:
        server.stop()
