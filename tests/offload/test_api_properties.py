"""Bad input at the offload API, generated (issue 20, item 3): every endpoint gets bodies, headers, sizes,
encodings, tokens and release paths drawn by hypothesis and by schemathesis (from the app's own OpenAPI schema).

The properties, checked on every generated request:
- the answer is a 2xx only for a valid request (a known token, a body the server documents), else a 4xx;
  never a 5xx, never an exception out of the app, never a traceback in the body or in the server's log;
- a refusal is JSON in the server's shape, ``{"error": {"code": ..., "message": one line}}``, and no response
  header carries anything the request injected;
- a refused request stores nothing (the record store's row count is unchanged) and never reaches the model;
- a stored record is what was sent, under the device of the token it came with (never another device's).

Requests go straight into the ASGI app (arbitrary header bytes, split or truncated bodies, a client that goes away:
what an HTTP client library would refuse to send) and, for schemathesis, through its ASGI transport. The record store
is real (SQLite in a temporary folder); the model is a protocol-level answerer that fails the test when the server
calls it with text it should have refused or on the event loop, and, in the last test, the tiny random bundle.
Deterministic: hypothesis runs derandomized with no example database and bounded examples.
"""

import asyncio
import json
import logging
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")
pytest.importorskip("hypothesis")

import anyio  # noqa: E402
import anyio.from_thread  # noqa: E402
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import InvalidArgument  # noqa: E402

from elma.offload.server import RecordStore, ServeConfig, create_app, hash_token  # noqa: E402
from elma.runtime.engine import validate_input  # noqa: E402

LIMIT_BYTES = 4096  # the app's max_body_bytes here: small, so that oversized bodies are cheap to generate
TOKENS = {"jetson-01": "token-of-jetson-01-kept-secret", "jetson-02": "token-of-jetson-02-kept-secret"}
REVOKED = "token-of-a-device-removed-from-the-tokens-file"
PUBLISHED = {"latest.json": b'{"version": 3}', "3/manifest.json": b'{"files": []}', "3/group0.onnx": b"ONNX" * 64}
SECRETS = (b"SECRET-OUTSIDE-THE-REPOSITORY", b"HIDDEN-FILE-IN-THE-REPOSITORY")
REPLY_KEYS = {"text", "no_answer", "exit_layer", "num_layers", "latency_ms"}
RECORD_FIELDS = ("record_id", "question", "context", "local_answer", "local_no_answer", "exit_layer", "num_layers",
                 "unsolved", "server_answer", "created_at_unix_s")


def fuzz(max_examples: int):
    """Hypothesis settings for these tests: derandomized (the same examples every run), no example database."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


class CheckingAnswerer:
    """``RuntimeAnswerer``'s protocol, checking what the server hands the model: only text that passed
    ``validate_input``, only off the event loop (a model call there would stall every other request).
    A violation is kept (the server would turn an exception here into its own 500) and fails the test."""

    model = "checking-answerer"
    num_layers = 3

    def __init__(self, inner=None):
        self.inner = inner
        self.calls: List[Tuple[str, str]] = []
        self.violations: List[str] = []
        self.lock = threading.Lock()

    def __call__(self, question, context):
        try:
            asyncio.get_running_loop()
            self.violations.append("the model was called on the event loop thread")
        except RuntimeError:
            pass
        if type(question) is not str or type(context) is not str:
            self.violations.append(f"the model got {type(question).__name__}, {type(context).__name__}")
        else:
            try:
                validate_input(question, context)
            except ValueError as err:
                self.violations.append(f"the model got unvalidated input: {err}")
        with self.lock:
            self.calls.append((question, context))
        if self.inner is not None:
            return self.inner(question, context)
        return {"text": context[:8], "no_answer": False, "exit_layer": 3, "num_layers": 3, "latency_ms": 0.1}


@dataclass
class Reply:
    status: int
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    raised: Optional[str] = None  # an exception that escaped the app

    def header(self, name: bytes) -> Optional[bytes]:
        return next((v for k, v in self.headers if k.lower() == name), None)


class ErrorLog(logging.Handler):
    """Keeps the server's log records at ERROR and above (``logger.exception`` writes a traceback there)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@dataclass
class Api:
    app: object
    store: RecordStore
    answerer: CheckingAnswerer
    portal: object
    errors: ErrorLog
    stored: dict = field(default_factory=dict)  # record_id -> (device, sent record): what must be in the store

    def request(self, method: str, path: str, headers=(), chunks=(b"",), disconnect: bool = False) -> Reply:
        """One request straight into the ASGI app: ``path`` decoded (as a server hands it over), ``headers`` as raw
        (name, value) bytes, the body in ``chunks``; ``disconnect``: the client goes away after the chunks."""
        try:  # shown with a failing example
            note(f"{method} {path!r} headers={list(headers)!r:.600} body={b''.join(chunks)!r:.300} in {len(chunks)} chunks")
        except InvalidArgument:  # not inside a hypothesis test
            pass
        return self.portal.call(asgi_request, self.app, method, path, list(headers), list(chunks), disconnect)


async def asgi_request(app, method, path, headers, chunks, disconnect) -> Reply:
    raw_path = urllib.parse.quote(path, safe="/").encode("ascii")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": raw_path, "query_string": b"",
             "root_path": "", "headers": [(k.lower(), v) for k, v in headers], "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    start, body = {}, []

    async def receive():
        if messages:
            return messages.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()  # spec 2.4: nothing waits for a disconnect after the body

    async def send(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    raised = None
    try:
        with anyio.fail_after(30):
            await app(scope, receive, send)
    except Exception as err:  # Starlette re-raises what no handler took, after its plain 500
        raised = f"{type(err).__name__}: {err}"
    return Reply(start.get("status", 0), list(start.get("headers", [])), b"".join(body), raised)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """A release repository with published files, plus what must never be served: a hidden file, a file next to
    the repository, and links from inside the repository to it."""
    base = tmp_path_factory.mktemp("releases")
    root = base / "repo"
    for rel, content in PUBLISHED.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    (base / "secret.txt").write_bytes(SECRETS[0])
    (root / ".hidden").write_bytes(SECRETS[1])
    (root / "3" / ".hidden").write_bytes(SECRETS[1])
    (root / "link-dir").symlink_to(base)
    (root / "link-file").symlink_to(base / "secret.txt")
    return root


@pytest.fixture(scope="module")
def api(tmp_path_factory, releases):
    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('store') / 'records.sqlite3'}")
    answerer = CheckingAnswerer()
    config = ServeConfig(max_body_bytes=LIMIT_BYTES, rate_per_s=1e9, burst=10**9, releases_dir=str(releases))
    app = create_app(config, answerer, store, {hash_token(t): d for d, t in TOKENS.items()}, clock=lambda: 0.0)
    errors = ErrorLog()
    logger = logging.getLogger("elma.offload.server")
    logger.addHandler(errors)
    with anyio.from_thread.start_blocking_portal() as portal:
        yield Api(app, store, answerer, portal, errors)
    logger.removeHandler(errors)
    store.close()


@pytest.fixture
def clean(api):
    """Fails the test on anything the properties forbid that is only visible on the side: a model call with
    unvalidated text, an error logged with a traceback, a store that holds other than what was accepted."""
    api.answerer.violations.clear()
    api.errors.records.clear()
    yield api
    assert api.answerer.violations == []
    assert sorted({f"{r.getMessage()}: {r.exc_info[1] if r.exc_info else ''}"[:160] for r in api.errors.records}) == []
    rows = {r["record_id"]: r for r in api.store.all()}
    assert set(rows) == set(api.stored)
    for rid, (device, sent) in api.stored.items():
        assert rows[rid]["device_id"] == device
        assert {k: rows[rid][k] for k in RECORD_FIELDS} == {k: sent.get(k) for k in RECORD_FIELDS}
        # what one store takes, every store must: PostgreSQL's text holds no NUL, its INTEGER is 32-bit
        assert not any("\x00" in v for v in rows[rid].values() if isinstance(v, str)), rows[rid]
        assert rows[rid]["exit_layer"] < 2**31 and rows[rid]["num_layers"] < 2**31


# ---- what every reply must look like ------------------------------------------------------------------------------

def assert_clean(reply: Reply) -> None:
    assert reply.raised is None, reply.raised
    assert 200 <= reply.status < 500, (reply.status, reply.body[:300])
    text = reply.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text, text[:300]
    for name, value in reply.headers:
        assert b"\r" not in value and b"\n" not in value and not name.startswith(b"x-injected"), (name, value)
    assert not any(s in reply.body for s in SECRETS)


def assert_refusal(reply: Reply, *statuses: int) -> dict:
    """A JSON 4xx in the server's error shape; returns the error."""
    assert_clean(reply)
    assert 400 <= reply.status < 500 and (not statuses or reply.status in statuses), (reply.status, reply.body[:300])
    assert (reply.header(b"content-type") or b"").startswith(b"application/json"), reply.headers
    body = json.loads(reply.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code, message = body["error"]["code"], body["error"]["message"]
    assert isinstance(code, str) and code.replace("_", "").isalpha() and code.islower(), code
    assert isinstance(message, str) and message.strip() and "\n" not in message, message
    if reply.status == 401:
        assert reply.header(b"www-authenticate") == b"Bearer"
    if reply.status == 429:
        assert int(reply.header(b"retry-after")) >= 1
    return body["error"]


def check_post(api: Api, path: str, device: Optional[str], body: bytes, reply: Reply, count_before: int,
               calls_before: int) -> None:
    """The properties of one POST: 401 for a bad token, otherwise 2xx only for a body that is valid, with its
    effect (a stored record under ``device``, one model call), else a refusal with no effect."""
    assert_clean(reply)
    if device is None:
        assert_refusal(reply, 401)
    if reply.status >= 300:
        assert_refusal(reply)
        assert api.store.count() == count_before and len(api.answerer.calls) == calls_before
        return
    assert reply.status == 200 and device is not None
    sent = json.loads(body.decode("utf-8"))  # accepted, so it must be UTF-8 JSON
    out = json.loads(reply.body)
    if path == "/v1/answer":
        assert set(out) == REPLY_KEYS and api.store.count() == count_before
        assert api.answerer.calls[calls_before:] == [(sent["question"], sent["context"])]
        return
    assert len(api.answerer.calls) == calls_before
    ids = list(dict.fromkeys(r["record_id"] for r in sent["records"]))
    assert out["record_ids"] == ids
    new = [r for r in sent["records"] if r["record_id"] not in api.stored]
    new = list({r["record_id"]: r for r in reversed(new)}.values())  # the first of duplicates is the one stored
    assert out["stored_new"] == len(new) and api.store.count() == count_before + len(new)
    for r in new:
        api.stored[r["record_id"]] = (device, r)


# ---- strategies -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10)
plain_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
any_text = st.text(st.characters(exclude_categories=()), max_size=30)  # NUL, lone surrogates, bidi controls, ...
edge_values = st.sampled_from([  # what a JSON parser, a validator or a database column may each take differently
    float("nan"), float("inf"), -float("inf"), 2**31, 2**63, 10**30, -(2**63) - 1, -1, 0, True, False, "3", 3.0, 1e308,
    "", " ", "\x00", "a\x00b", "\ud800", "\u202e", "\ufeff", None, [], {}, [None], {"": None}])


def valid_record():
    return st.fixed_dictionaries(
        {"record_id": st.uuids().map(str), "question": plain_text, "context": plain_text, "local_answer": plain_text,
         "local_no_answer": st.booleans(), "exit_layer": st.integers(1, 24), "num_layers": st.integers(1, 24),
         "unsolved": st.booleans(), "created_at_unix_s": st.floats(0, 4e9)},
        optional={"server_answer": st.none() | plain_text})


@st.composite
def mutated(draw, valid):
    """A valid object, or one with a field dropped, replaced by any JSON value or text, or an unknown field added."""
    obj = dict(draw(valid))
    how = draw(st.sampled_from(["keep", "keep", "drop", "replace", "text", "edge", "edge", "extra"]))
    key = draw(st.sampled_from(sorted(obj)))
    if how == "drop":
        del obj[key]
    elif how == "replace":
        obj[key] = draw(json_values)
    elif how == "text":
        obj[key] = draw(any_text)
    elif how == "edge":
        obj[key] = draw(edge_values)
    elif how == "extra":
        obj[draw(st.text(max_size=8)) + "_"] = draw(json_values)
    return obj


answer_bodies = mutated(st.fixed_dictionaries({"question": plain_text, "context": plain_text},
                                              optional={"record_id": st.uuids().map(str) | st.none()}))
records_bodies = st.one_of(
    st.builds(lambda rs: {"records": rs}, st.lists(mutated(valid_record()), min_size=1, max_size=3)),
    st.builds(lambda rs: {"records": rs}, st.lists(valid_record(), max_size=2)),  # [] is too few
    json_values)


@st.composite
def encoded(draw, objects):
    """``objects`` as a body in some encoding (UTF-8 mostly; UTF-16, Latin-1 or a BOM now and then)."""
    text = json.dumps(draw(objects), ensure_ascii=draw(st.booleans()), allow_nan=True)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1", "utf-8-sig"]))
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")


def record_json(**fields) -> bytes:
    """A records body of one valid record with ``fields`` written in as raw JSON text."""
    record = {"record_id": "8c1f2a52-1b5e-4c8e-9f61-2f1d6f3b7a10", "question": "Who?", "context": "Rollo led them.",
              "local_answer": "", "local_no_answer": True, "exit_layer": 2, "num_layers": 3, "unsolved": True,
              "server_answer": None, "created_at_unix_s": 1.5}
    text = json.dumps({"records": [record]})
    for key, raw in fields.items():
        text = text.replace(f'"{key}": {json.dumps(record[key])}', f'"{key}": {raw}')
    return text.encode()


PATHOLOGICAL = [  # bodies that once broke the server (see the commit) and their kin
    b"[" * 2000 + b"]" * 2000, b'{"a":' * 700 + b"1" + b"}" * 700,  # past Python's recursion limit
    record_json(created_at_unix_s="NaN"), record_json(created_at_unix_s="Infinity"), record_json(created_at_unix_s="1e999"),
    record_json(exit_layer="1" + "0" * 30), record_json(num_layers=str(2**63)), record_json(exit_layer="-1"),
    record_json(local_answer='"a\\u0000b"'), record_json(question='"\\ud800"'), record_json(exit_layer='"3"'),
    record_json(unsolved='"no"'), record_json(exit_layer="3.0"), record_json(server_answer="1"),
    b'{"question": "q", "context": NaN}', b'{"question": "\\ud800", "context": "c"}', b'{"question": "q", "context": "\\u0000"}',
    b'{"question": " ", "context": "c"}', b'{"question": "q", "context": "\\u3000"}', b'{"\\ud800": 1}',
    b"", b"null", b"NaN", b"-Infinity", b'"\\ud800"', b"\xef\xbb\xbf{}", b"1e99999", b"[" + b"9" * 4000 + b"]",
]
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=1, max_size=32).map(lambda b: b'{"records": "' + b"\xc3\x28\xff" + b + b'"}'),  # bad UTF-8
    st.integers(1, 2000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from(PATHOLOGICAL))

AUTH_CASES = [  # (header values, in order; the device the server must take them for, None: refused with 401)
    ([], None),
    ([b""], None),
    ([b"Bearer"], None),
    ([b"Bearer   "], None),
    ([b"Basic " + TOKENS["jetson-01"].encode()], None),
    ([b"Bearer " + REVOKED.encode()], None),
    ([b"Bearer " + hash_token(TOKENS["jetson-01"]).encode()], None),  # the tokens file's line is not a token
    ([b"Bearer " + TOKENS["jetson-01"].encode()[:-1]], None),
    ([b"Bearer " + TOKENS["jetson-01"].encode() + b"x"], None),
    ([b"Bearer " + TOKENS["jetson-01"].upper().encode()], None),
    ([b"Bearer " + TOKENS["jetson-01"].encode() + b"\r\nX-Injected: 1"], None),
    ([b"Bearer " + TOKENS["jetson-01"].encode() + b"\x00"], None),
    ([b"Bearer\t" + TOKENS["jetson-01"].encode()], None),
    ([b"Bearer " + b"A" * 20000], None),
    ([b"Bearer \xff\xfe\x80"], None),
    ([b"Bearer " + REVOKED.encode(), b"Bearer " + TOKENS["jetson-01"].encode()], None),  # the first one counts
    ([b"Bearer " + TOKENS["jetson-01"].encode()], "jetson-01"),
    ([b"bearer  " + TOKENS["jetson-01"].encode() + b" "], "jetson-01"),
    ([b"Bearer " + TOKENS["jetson-02"].encode()], "jetson-02"),
]
VALID_AUTH = [case for case in AUTH_CASES if case[1] is not None]
auth_headers = st.one_of(st.sampled_from(VALID_AUTH), st.sampled_from(VALID_AUTH), st.sampled_from(AUTH_CASES),  # most get past the token
                         st.binary(max_size=40).map(lambda b: ([b"Bearer " + b], None)),
                         st.binary(max_size=40).map(lambda b: ([b], None)))
content_types = st.one_of(
    st.sampled_from([None, b"application/json", b"application/json; charset=utf-8", b"application/json; charset=utf-16",
                     b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                     b"application/octet-stream", b"application/json\r\nX-Injected: 1"]),
    st.binary(max_size=30))
content_lengths = st.sampled_from(["exact", "exact", "none", "zero", "smaller", "larger", "huge", "digits", "garbage"])
extra_headers = st.lists(st.tuples(
    st.sampled_from([b"content-encoding", b"transfer-encoding", b"accept", b"accept-charset", b"expect", b"host",
                     b"x-forwarded-for", b"cookie", b"range", b"x-injected-name"]) | st.binary(min_size=1, max_size=12),
    st.sampled_from([b"gzip", b"chunked", b"100-continue", b"\r\nX-Injected: 1", b"identity, br"]) | st.binary(max_size=24)),
    max_size=3)


def content_length(kind: str, body: bytes):
    return {"exact": str(len(body)).encode(), "none": None, "zero": b"0", "smaller": str(max(0, len(body) - 3)).encode(),
            "larger": str(len(body) + 10).encode(), "huge": b"9" * 5000, "digits": "\u00b2".encode("latin-1"),
            "garbage": b"-12 or 1e3"}[kind]


# ---- the tests --------------------------------------------------------------------------------------------------------

def test_the_schema_documents_bodies_refusals_and_the_token(api):
    """What schemathesis (and /docs) works from: each POST's body, the bearer token and the error shape."""
    schema = api.app.openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "the device's token (elma-serve --add-device)"}
    for path in ("/v1/answer", "/v1/records"):
        op = schema["paths"][path]["post"]
        assert op["security"] == [{"HTTPBearer": []}]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is False and "$ref" not in json.dumps(body)
        assert {"401", "413", "422", "429"} <= set(op["responses"])
    records = schema["paths"]["/v1/records"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    item = records["properties"]["records"]["items"]
    assert set(item["required"]) == set(RECORD_FIELDS) - {"server_answer"}
    assert item["properties"]["exit_layer"]["maximum"] == 2**31 - 1
    assert "security" not in schema["paths"]["/v1/health"]["get"]
    assert schema["paths"]["/v1/releases/{path}"]["get"]["security"] == [{"HTTPBearer": []}]


def post(api, path, auth, body, ctype=None, length="exact", extra=(), splits=()):
    """POST ``body`` with the headers drawn and check the properties (``check_post``)."""
    values, device = auth
    headers = [(b"authorization", v) for v in values] + [(k, v) for k, v in extra if k.lower() != b"authorization"]
    if ctype is not None:
        headers.append((b"content-type", ctype))
    cl = content_length(length, body)
    if cl is not None:
        headers.append((b"content-length", cl))
    cuts = sorted({min(s, len(body)) for s in splits})
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    count, calls = api.store.count(), len(api.answerer.calls)
    reply = api.request("POST", path, headers, chunks)
    check_post(api, path, device, body, reply, count, calls)
    if length == "huge":  # a Content-Length of 5000 digits is over any limit
        assert reply.status == (401 if device is None else 413)
    return reply


@fuzz(200)
@given(path=st.sampled_from(["/v1/answer", "/v1/records"]), data=st.data(), auth=st.sampled_from(VALID_AUTH),
       ctype=content_types, length=content_lengths, splits=st.lists(st.integers(0, 4096), max_size=3))
def test_any_body_with_a_valid_token_is_answered_in_json_and_only_a_valid_one_has_an_effect(clean, path, data, auth, ctype,
                                                                                             length, splits):
    objects = answer_bodies if path == "/v1/answer" else records_bodies
    body = data.draw(st.one_of(encoded(objects), raw_bodies), label="body")
    post(clean, path, auth, body, ctype, length, splits=splits)


@pytest.mark.parametrize("body", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
@pytest.mark.parametrize("path", ["/v1/answer", "/v1/records"])
def test_bodies_that_broke_the_server_once_get_a_json_4xx(clean, path, body):
    """The generated tests found these (each fix shadowed the next); kept as explicit examples."""
    reply = post(clean, path, VALID_AUTH[0], body)
    assert reply.status == 200 and body == record_json() or 400 <= reply.status < 500


@fuzz(120)
@given(path=st.sampled_from(["/v1/answer", "/v1/records"]), auth=auth_headers, ctype=content_types, length=content_lengths,
       extra=extra_headers, body=st.sampled_from([record_json(), b'{"question": "Who?", "context": "Rollo led them."}',
                                                  b"{not json", b"\xff\xfe"]))
def test_any_token_and_headers_get_401_or_the_bodys_answer(clean, path, auth, ctype, length, extra, body):
    post(clean, path, auth, body, ctype, length, extra)


@fuzz(40)
@given(path=st.sampled_from(["/v1/answer", "/v1/records"]), size=st.integers(LIMIT_BYTES + 1, 3 * LIMIT_BYTES),
       declared=st.booleans(), piece=st.integers(1, 2048), valid_prefix=st.booleans())
def test_a_body_over_the_limit_is_413_declared_or_not(clean, path, size, declared, piece, valid_prefix):
    api = clean
    head = (b'{"records": [{"question": "' if path == "/v1/records" else b'{"question": "q", "context": "') if valid_prefix else b""
    body = head + b"x" * (size - len(head))
    headers = [(b"authorization", b"Bearer " + TOKENS["jetson-01"].encode())]
    if declared:
        headers.append((b"content-length", str(size).encode()))
    count, calls = api.store.count(), len(api.answerer.calls)
    reply = api.request("POST", path, headers, [body[i:i + piece] for i in range(0, size, piece)])
    assert assert_refusal(reply, 413)["code"] == "too_large"
    assert api.store.count() == count and len(api.answerer.calls) == calls


@pytest.mark.parametrize("path", ["/v1/answer", "/v1/records"])
def test_a_client_that_goes_away_mid_body_is_no_server_failure(clean, path):
    api = clean
    count = api.store.count()
    body = json.dumps({"records": [{"question": "who"}]}).encode()
    reply = api.request("POST", path, [(b"authorization", b"Bearer " + TOKENS["jetson-01"].encode())],
                        [body[:10]], disconnect=True)
    assert_refusal(reply, 400)
    assert api.store.count() == count


@fuzz(40)
@given(record=valid_record(), first=st.sampled_from(sorted(TOKENS)))
def test_a_record_belongs_to_the_device_of_its_token(clean, record, first):
    """Another device's token stores under that other device; resending a record id another device stored first
    changes nothing (idempotent by id, the first device keeps it)."""
    api = clean
    second = next(d for d in TOKENS if d != first)
    owner = api.stored.get(record["record_id"], (first,))[0]  # derandomized ids may repeat across tests
    body = json.dumps({"records": [record]}).encode()
    for device in (first, second, first):
        count = api.store.count()
        reply = api.request("POST", "/v1/records", [(b"authorization", b"Bearer " + TOKENS[device].encode())], [body])
        check_post(api, "/v1/records", device, body, reply, count, len(api.answerer.calls))
        assert reply.status == 200
    assert api.stored[record["record_id"]][0] == owner


release_paths = st.one_of(
    st.sampled_from(sorted(PUBLISHED)),
    st.sampled_from(["", "/", "..", "../secret.txt", "3/../../secret.txt", "3/../latest.json", "/etc/passwd",
                     "//etc/passwd", "..%2fsecret.txt", "%2e%2e/secret.txt", "..\\secret.txt", "3\\..\\latest.json",
                     ".hidden", "3/.hidden", "link-dir/secret.txt", "link-file", "3/./manifest.json",
                     "3//manifest.json", "3/manifest.json/", "3/manifest.json\x00.png", "latest.json\x00", "3",
                     "3/", "~", "latest.json;.png", "latest.json%00", "a" * 129, "/".join(["a"] * 6), "CON",
                     "3/manifest.json/..", "\u2025/secret.txt", "\uff0e\uff0e/secret.txt", "latest.json\r\nX-Injected: 1"]),
    st.lists(st.sampled_from(["..", ".", "3", "manifest.json", "latest.json", "link-dir", ".hidden", "", "%2e"]) | st.text(max_size=8),
             min_size=1, max_size=5).map("/".join))
range_headers = st.one_of(
    st.none(),
    st.sampled_from([b"bytes=0-3", b"bytes=2-", b"bytes=-5", b"bytes=0-0,2-3", b"bytes=5-1", b"bytes=999999-",
                     b"bytes=-0", b"bytes=0-99999999999999999999999", b"bytes=", b"bytes=a-b", b"items=0-3", b"bytes",
                     b"bytes=0-1," * 300, b"bytes=\xff-\xfe"]),
    st.binary(max_size=24))


@fuzz(200)
@given(rel=release_paths, auth=auth_headers, rng=range_headers)
def test_release_paths_serve_published_files_only(clean, rel, auth, rng):
    api = clean
    values, device = auth
    headers = [(b"authorization", v) for v in values] + ([(b"range", rng)] if rng is not None else [])
    reply = api.request("GET", "/v1/releases/" + rel, headers)
    assert_clean(reply)
    if device is None:  # 401, or 404 for a path the route cannot match (a newline inside: routing comes first)
        assert assert_refusal(reply, 401, 404) and (reply.status == 401 or "\n" in rel)
        return
    if reply.status >= 300:
        error = assert_refusal(reply, 400, 404, 416)
        assert (reply.status == 404) == (rel not in PUBLISHED), (rel, error)
        return
    assert rel in PUBLISHED, rel  # served: exactly a published file
    content = PUBLISHED[rel]
    if reply.status == 200:
        assert reply.body == content
    else:
        assert reply.status == 206 and rng is not None
        if b"multipart" not in (reply.header(b"content-type") or b""):
            assert reply.body in content


@fuzz(30)
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "POST", "TRACE", "BREW"]),
       path=st.sampled_from(["/v1/health", "/v1/answer", "/v1/records", "/v1/releases/latest.json", "/", "/v2/answer",
                             "/v1/records/1", "/docs/../v1/records"]) | st.text(max_size=12).map(lambda s: "/" + s),
       auth=st.sampled_from(AUTH_CASES))
def test_any_method_and_path_is_json(clean, method, path, auth):
    """Unknown paths and methods get the server's error shape too (Starlette's default is {"detail": ...})."""
    api = clean
    values, device = auth
    count = api.store.count()
    reply = api.request(method, path, [(b"authorization", v) for v in values],
                        [json.dumps({"question": "q", "context": "c"}).encode()])
    assert_clean(reply)
    if reply.status >= 300:
        assert_refusal(reply)
    else:
        public = ("/v1/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's docs, no token
        assert method in ("GET", "POST") and (device is not None or path in public), (method, path, reply.status)
    assert api.store.count() == count


# ---- schemathesis, from the app's own OpenAPI schema --------------------------------------------------------------------

OPERATIONS = [("GET", "/v1/health", ("positive",)), ("POST", "/v1/answer", ("positive", "negative")),
              ("POST", "/v1/records", ("positive", "negative")), ("GET", "/v1/releases/{path}", ("positive", "negative"))]


@pytest.fixture(scope="module")
def api_schema(api):
    schemathesis = pytest.importorskip("schemathesis")
    refusals = ["400", "401", "404", "405", "413", "416", "422", "429"]  # 413: a string over maxLength is a big body
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, config=config)

    @schema.auth()
    class DeviceToken:  # applied to every case except those schemathesis makes without a valid token on purpose
        def get(self, case, ctx):
            return TOKENS["jetson-01"]

        def set(self, case, data, ctx):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


@pytest.mark.parametrize("method, path, mode", [(m, p, mode) for m, p, modes in OPERATIONS for mode in modes])
def test_schemathesis_cases_get_documented_json_answers(clean, api_schema, method, path, mode):
    """Positive cases (bodies the schema allows) and negative ones (bodies, headers and tokens it does not):
    schemathesis's own checks (no 5xx, negative data refused, statuses, content types and error bodies as documented)
    and ours (the error shape, nothing stored when refused)."""
    from schemathesis import GenerationMode, checks

    api = clean
    operation = api_schema[path][method]
    documented = [checks.not_a_server_error, checks.negative_data_rejection, checks.status_code_conformance,
                  checks.content_type_conformance, checks.response_schema_conformance]

    @fuzz(15)
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def run(case):
        count, calls = api.store.count(), len(api.answerer.calls)
        response = case.call()
        case.validate_response(response, checks=documented)
        reply = Reply(response.status_code, [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                             for k, vs in response.headers.items() for v in vs], response.content)
        assert_clean(reply)
        if response.status_code >= 300:
            assert_refusal(reply)
            assert api.store.count() == count and len(api.answerer.calls) == calls
        elif path == "/v1/records":
            sent = case.body["records"]
            ids = list(dict.fromkeys(r["record_id"] for r in sent))
            for r in sent:
                if r["record_id"] not in api.stored:
                    api.stored[r["record_id"]] = ("jetson-01", r)
            assert json.loads(response.content)["record_ids"] == ids and api.store.count() == len(api.stored)

    run()


# ---- the real model behind /v1/answer -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_api(tiny_bundles, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from elma.offload.server import RuntimeAnswerer
    from elma.runtime.engine import Runtime

    runtime = Runtime.open(tiny_bundles.bundle("bert"), policy="none")
    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('model-store') / 'records.sqlite3'}")
    answerer = CheckingAnswerer(RuntimeAnswerer(runtime))
    app = create_app(ServeConfig(max_body_bytes=LIMIT_BYTES, rate_per_s=1e9, burst=10**9), answerer, store,
                     {hash_token(TOKENS["jetson-01"]): "jetson-01"}, clock=lambda: 0.0)
    with anyio.from_thread.start_blocking_portal() as portal:
        yield Api(app, store, answerer, portal, ErrorLog())
    runtime.close()
    store.close()


@fuzz(30)
@given(question=any_text, context=st.text(max_size=400) | st.sampled_from(["\u200b", "\ufeff", "\x01\x02", "\u0301" * 50,
                                                                            "\U0001F600 " * 100, "a" * 3000]))
def test_the_tiny_model_answers_any_text_or_refuses_it_in_json(model_api, question, context):
    """Text the schema allows but the tokenizer may find odd (zero-width, control, combining characters, emoji,
    one long word) reaches the real model: an answer, or a 422 when ``validate_input`` refuses it."""
    api = model_api
    body = json.dumps({"question": question, "context": context}).encode("utf-8", "surrogatepass")
    calls = len(api.answerer.calls)
    reply = api.request("POST", "/v1/answer", [(b"authorization", b"Bearer " + TOKENS["jetson-01"].encode())], [body])
    check_post(api, "/v1/answer", "jetson-01", body, reply, 0, calls)
    if reply.status == 200:
        out = json.loads(reply.body)
        assert out["exit_layer"] == out["num_layers"] == api.answerer.inner.num_layers
        assert out["no_answer"] or out["text"] in context
    else:
        assert reply.status in (400, 422) and len(api.answerer.calls) == calls
    assert api.answerer.violations == [] and api.store.count() == 0
