"""Offload client without a network: the decision rule, the circuit breaker on an injected clock, deadline,
retries and back-off with an injected transport, and batch upload bookkeeping."""

import pytest

from elma.errors import OffloadError, OffloadRejected
from elma.offload.client import CircuitBreaker, OffloadClient, OffloadConfig, offload_reason, read_token_file
from elma.offload.queue import RecordQueue
from elma.runtime.engine import Answer


def answer(text="Rollo", unsolved=False, no_answer=False, score=1.0):
    return Answer("" if no_answer else text, -1, -1, score, no_answer, 3, 3, (1.0, 1.0, 1.0), 5.0, unsolved, "none")


class Clock:
    def __init__(self):
        self.now_s = 100.0

    def __call__(self):
        return self.now_s

    def sleep(self, s):
        self.now_s += s


CONFIG = OffloadConfig("http://127.0.0.1:9", token="secret", deadline_ms=300, retries=2, backoff_ms=20, breaker_failures=3)


def test_decision_rule():
    assert offload_reason(answer(unsolved=True), CONFIG) == "unsolved"
    assert offload_reason(answer(), CONFIG) == ""
    assert offload_reason(answer(no_answer=True, score=-0.1), CONFIG) == ""  # rule off by default
    close = OffloadConfig("http://x", token="t", offload_no_answer_above=-0.5)
    assert offload_reason(answer(no_answer=True, score=-0.1), close) == "close no-answer"
    assert offload_reason(answer(no_answer=True, score=-3.0), close) == ""


def test_config_validation_and_no_token_in_repr(tmp_path):
    with pytest.raises(ValueError, match="http://"):
        OffloadConfig("ftp://x", token="t")
    with pytest.raises(ValueError, match="token is empty"):
        OffloadConfig("http://x", token="")
    assert "secret" not in repr(CONFIG)
    with pytest.raises(OffloadError, match="token file is empty"):
        (tmp_path / "t").write_text("\n")
        read_token_file(tmp_path / "t")
    (tmp_path / "t").write_text("  abc \n")
    assert read_token_file(tmp_path / "t") == "abc"


def test_circuit_breaker_opens_half_opens_and_closes():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_after_s=5.0, clock=clock)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.now_s += 4.9
    assert not b.allow()
    clock.now_s += 0.2
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial at a time
    b.record_failure()  # the trial failed: open again for another 5 s
    assert b.state == "open" and not b.allow()
    clock.now_s += 5.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)


def make_client(tmp_path, post, clock, **config):
    cfg = OffloadConfig(**{**CONFIG.__dict__, **config})
    return OffloadClient(cfg, RecordQueue(tmp_path / "q.sqlite3"), post=post, clock=clock, sleep=clock.sleep)


def test_solved_question_stays_local_and_queues_nothing(tmp_path):
    clock = Clock()
    client = make_client(tmp_path, post=lambda *a: pytest.fail("asked the server"), clock=clock)
    r = client.resolve("q", "c", answer())
    assert not r.offloaded and not r.deferred and r.record_id is None and r.text == "Rollo"
    assert client.queue.count() == 0


def test_unsolved_question_gets_the_server_answer_and_is_recorded(tmp_path):
    clock, sent = Clock(), []

    def post(url, payload, token, timeout_s):
        sent.append((url, payload, token, timeout_s))
        return {"text": "Rollo the Walker", "no_answer": False}

    client = make_client(tmp_path, post, clock)
    r = client.resolve("Who?", "ctx", answer("Rollo", unsolved=True))
    assert r.offloaded and not r.deferred and r.text == "Rollo the Walker" and r.reason == "unsolved" and r.attempts == 1
    url, payload, token, timeout_s = sent[0]
    assert url.endswith("/v1/answer") and token == "secret" and payload["record_id"] == r.record_id
    assert timeout_s == pytest.approx(0.3)
    rec = client.queue.get(r.record_id)
    assert rec.server_answer == "Rollo the Walker" and rec.local_answer == "Rollo" and rec.unsolved and not rec.uploaded


def test_retries_with_backoff_then_deferred_within_the_deadline(tmp_path):
    clock, timeouts = Clock(), []

    def post(url, payload, token, timeout_s):
        timeouts.append(timeout_s)
        clock.now_s += 0.05  # each failing attempt costs 50 ms
        raise OffloadError("connection refused")

    client = make_client(tmp_path, post, clock, breaker_failures=10)
    began = clock.now_s
    r = client.resolve("Who?", "ctx", answer("Rollo", unsolved=True))
    assert r.deferred and not r.offloaded and r.text == "Rollo" and r.attempts == 3
    # 3 attempts of 50 ms and back-offs of 20 and 40 ms between them (none after the last)
    assert clock.now_s - began == pytest.approx(0.05 * 3 + 0.02 + 0.04)
    assert timeouts[0] == pytest.approx(0.3) and timeouts[1] == pytest.approx(0.3 - 0.07)
    assert client.queue.get(r.record_id).server_answer is None


def test_a_slow_server_never_pushes_past_the_deadline(tmp_path):
    clock = Clock()

    def post(url, payload, token, timeout_s):
        clock.now_s += timeout_s  # hangs until its socket timeout
        raise OffloadError("timed out")

    client = make_client(tmp_path, post, clock, breaker_failures=10)
    r = client.resolve("Who?", "ctx", answer(unsolved=True))
    assert r.deferred and r.attempts == 1 and r.offload_ms == pytest.approx(300.0)


def test_breaker_skips_the_server_after_failures(tmp_path):
    clock, calls = Clock(), []

    def post(*a):
        calls.append(a)
        raise OffloadError("down")

    client = make_client(tmp_path, post, clock, retries=0, breaker_failures=2)
    for _ in range(4):
        assert client.resolve("q", "c", answer(unsolved=True)).deferred
    assert len(calls) == 2 and client.breaker.state == "open" and client.queue.count() == 4


def test_a_refusal_is_not_retried(tmp_path):
    clock, calls = Clock(), []

    def post(*a):
        calls.append(a)
        raise OffloadRejected("HTTP 401: wrong token")

    r = make_client(tmp_path, post, clock).resolve("q", "c", answer(unsolved=True))
    assert r.deferred and len(calls) == 1


def test_upload_in_batches_marks_what_was_acknowledged(tmp_path):
    clock, batches = Clock(), []

    def post(url, payload, token, timeout_s):
        assert url.endswith("/v1/records")
        ids = [r["record_id"] for r in payload["records"]]
        batches.append(ids)
        if len(batches) == 3:
            raise OffloadError("server went away")
        return {"record_ids": ids, "stored_new": len(ids)}

    client = make_client(tmp_path, post, clock, upload_batch_size=2)
    for i in range(5):
        client.queue.add(f"q{i}", "c", "", 3, 3, True)
    with pytest.raises(OffloadError, match="4 records uploaded before, 1 still pending"):
        client.upload_pending()
    assert client.queue.count(pending_only=True) == 1
    batches.clear()
    report = client.upload_pending()
    assert report.uploaded == 1 and report.pending_left == 0 and report.batches == 1
    assert set(batches[0]) == {r.record_id for r in client.queue.all() if r.question == "q4"}


def test_upload_chunks_stay_under_the_byte_limit(tmp_path):
    clock, sizes = Clock(), []

    def post(url, payload, token, timeout_s):
        import json

        sizes.append((len(payload["records"]), len(json.dumps(payload).encode())))
        return {"record_ids": [r["record_id"] for r in payload["records"]], "stored_new": len(payload["records"])}

    client = make_client(tmp_path, post, clock, upload_batch_size=100, upload_max_bytes=5000)
    for i in range(5):
        client.queue.add(f"q{i}", "x" * 2000, "", 3, 3, True)
    client.queue.add("big", "y" * 9000, "", 3, 3, True)  # over the limit alone: still sent, alone
    report = client.upload_pending()
    assert report.uploaded == 6 and report.pending_left == 0
    assert [n for n, _ in sizes] == [2, 2, 1, 1] and all(b < 5000 for n, b in sizes[:3])


def test_a_reply_that_is_not_an_object_is_an_error(monkeypatch):
    import io
    import urllib.request

    from elma.offload import client as client_module

    class Opener:
        def open(self, request, timeout):
            return io.BytesIO(b"[1, 2]")

    monkeypatch.setattr(urllib.request, "build_opener", lambda *a: Opener())
    with pytest.raises(OffloadError, match="not a JSON object"):
        client_module.post_json("http://127.0.0.1:9/v1/answer", {}, "t", 1.0)
