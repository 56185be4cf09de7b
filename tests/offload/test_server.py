"""Server pieces without a model: tokens file, token bucket on an injected clock, and the app through FastAPI's
test client: 401 / 413 / 400 / 422 / 429 as clear JSON with nothing stored, and idempotent record upload."""

import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from elma.errors import OffloadError  # noqa: E402
from elma.offload.server import (  # noqa: E402
    RateLimiter,
    RecordStore,
    ServeConfig,
    TokenBucket,
    add_device,
    create_app,
    hash_token,
    load_tokens,
)


class Clock:
    def __init__(self):
        self.now_s = 10.0

    def __call__(self):
        return self.now_s


def test_tokens_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "tokens.txt"
    token = add_device(path, "jetson-01")
    assert token not in path.read_text() and hash_token(token) in path.read_text()
    assert (path.stat().st_mode & 0o777) == 0o600
    path.write_text(path.read_text() + "# a comment\n\nbench-2 " + hash_token("abc") + "  # inline\n")
    assert load_tokens(path) == {hash_token(token): "jetson-01", hash_token("abc"): "bench-2"}
    with pytest.raises(OffloadError, match="already has a token"):
        add_device(path, "jetson-01")
    for bad, match in [("dev sha256:xyz\n", "expected 'DEVICE_ID"), ("dev plain-token\n", "expected"),
                       ("", "no devices"), (f"a {hash_token('x')}\na {hash_token('y')}\n", "listed twice")]:
        path.write_text(bad)
        with pytest.raises(OffloadError, match=match):
            load_tokens(path)
    with pytest.raises(OffloadError, match="cannot read the tokens file"):
        load_tokens(tmp_path / "missing")


def test_token_bucket_burst_then_refill():
    clock = Clock()
    b = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    assert b.wait_s() == pytest.approx(0.5)
    clock.now_s += 0.5
    assert b.take() and not b.take()
    clock.now_s += 100  # refills only up to the burst
    assert sum(b.take() for _ in range(10)) == 3
    limiter = RateLimiter(1.0, 1, clock)
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0 and limiter.take("b") == 0.0  # per device
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def fake_answerer(question, context):
    return {"text": "Rollo", "no_answer": False, "exit_layer": 3, "num_layers": 3, "latency_ms": 1.0}


TOKEN = "device-token-1"


@pytest.fixture
def app_parts(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    clock = Clock()
    config = ServeConfig(max_body_bytes=4096, rate_per_s=1.0, burst=5)
    app = create_app(config, fake_answerer, store, {hash_token(TOKEN): "jetson-01"}, clock=clock)
    yield TestClient(app), store, clock
    store.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def record(**over):
    r = {"record_id": str(uuid.uuid4()), "question": "Who?", "context": "Rollo led them.", "local_answer": "",
         "local_no_answer": True, "exit_layer": 2, "num_layers": 3, "unsolved": True, "server_answer": "Rollo",
         "created_at_unix_s": 1.0}
    r.update(over)
    return r


def test_health_and_answer(app_parts):
    client, _, _ = app_parts
    assert client.get("/v1/health").json()["status"] == "ok"
    r = client.post("/v1/answer", json={"question": "Who?", "context": "Rollo led them."}, headers=AUTH)
    assert r.status_code == 200 and r.json()["text"] == "Rollo"


def test_records_are_stored_once(app_parts):
    client, store, _ = app_parts
    batch = [record(), record()]
    r = client.post("/v1/records", json={"records": batch + [batch[0]]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["stored_new"] == 2 and len(r.json()["record_ids"]) == 2
    r = client.post("/v1/records", json={"records": batch + [record()]}, headers=AUTH)
    assert r.json()["stored_new"] == 1 and store.count() == 3
    rows = store.all()
    assert {row["device_id"] for row in rows} == {"jetson-01"} and rows[0]["server_answer"] == "Rollo"


@pytest.mark.parametrize("headers, body, status, code, match", [
    ({}, {"records": [record()]}, 401, "unauthorized", "no bearer token"),
    ({"Authorization": "Bearer wrong"}, {"records": [record()]}, 401, "unauthorized", "unknown token"),
    ({"Authorization": "Basic abc"}, {"records": [record()]}, 401, "unauthorized", "no bearer token"),
    (AUTH, {"records": [record(context="x" * 5000)]}, 413, "too_large", "limit is 4096"),
    (AUTH, b"{not json", 400, "malformed_json", "not valid UTF-8 JSON"),
    (AUTH, b"\xff\xfe", 400, "malformed_json", "not valid"),
    (AUTH, {"records": [record(record_id="not-a-uuid")]}, 422, "invalid_request", "records.0.record_id"),
    (AUTH, {"records": [record(exit_layer=0)]}, 422, "invalid_request", "exit_layer"),
    (AUTH, {"records": []}, 422, "invalid_request", "records"),
    (AUTH, {"records": [record()], "extra": 1}, 422, "invalid_request", "extra"),
])
def test_bad_requests_get_clear_json_errors_and_store_nothing(app_parts, headers, body, status, code, match):
    client, store, _ = app_parts
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post("/v1/records", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and match in err["message"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert store.count() == 0


def test_oversize_without_content_length_is_refused(app_parts):
    client, store, _ = app_parts

    def chunks():
        yield b'{"records": [{"question": "'
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/v1/records", headers=AUTH, content=chunks())
    assert r.status_code == 413 and store.count() == 0


def test_answer_input_errors(app_parts):
    client, _, _ = app_parts
    for body, match in [({"question": "", "context": "c"}, "question"), ({"question": "q", "context": "a\x00b"}, "NUL bytes"),
                        ({"question": "q"}, "context")]:
        r = client.post("/v1/answer", json=body, headers=AUTH)
        assert r.status_code == 422 and match in r.json()["error"]["message"], r.text


def test_rate_limit_per_device(app_parts):
    client, store, clock = app_parts
    codes = [client.post("/v1/answer", json={"question": "q", "context": "c"}, headers=AUTH).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    r = client.post("/v1/records", json={"records": [record()]}, headers=AUTH)
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and store.count() == 0
    clock.now_s += 1.0
    assert client.post("/v1/answer", json={"question": "q", "context": "c"}, headers=AUTH).status_code == 200


def test_a_bad_db_url_is_one_clear_error(tmp_path):
    with pytest.raises(OffloadError, match="cannot open the record store"):
        RecordStore("nosuchdialect://x")
    assert RecordStore.engine_url("postgresql+psycopg://elma:s3cret@h/db") == "postgresql+psycopg://elma:***@h/db"


def test_a_failing_model_is_a_json_500(tmp_path):
    def broken(question, context):
        raise RuntimeError("CUDA went away")

    store = RecordStore(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    client = TestClient(create_app(ServeConfig(), broken, store, {hash_token(TOKEN): "d"}), raise_server_exceptions=False)
    r = client.post("/v1/answer", json={"question": "q", "context": "c"}, headers=AUTH)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal" and "RuntimeError" in r.json()["error"]["message"]
    store.close()
