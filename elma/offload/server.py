"""The offload server: the full-depth model answers what devices could not settle, and keeps their error records.

    app = create_app(ServeConfig(model=..., tokens_file=...))        # FastAPI; `elma-serve` runs it with uvicorn

Endpoints (JSON in and out; errors are ``{"error": {"code": ..., "message": ...}}``):

- ``POST /v1/answer`` ``{"question", "context", "record_id"?}`` -> ``{"text", "no_answer", "exit_layer",
  "num_layers", "latency_ms"}``. Stateless: the record travels with ``POST /v1/records``.
- ``POST /v1/records`` ``{"records": [ErrorRecord, ...]}`` -> ``{"record_ids": [...], "stored_new": n}``.
  Idempotent by ``record_id``: a record sent twice is stored once.
- ``GET /v1/health`` -> ``{"status": "ok", "model": ..., "num_layers": ...}`` (no token needed).
- ``GET /v1/releases/PATH`` (with ``--releases DIR``): a file of the signed release repository (``elma publish``), as
  static files with Range requests (resumable downloads); 404 for anything else.

Every POST (and every release download) needs ``Authorization: Bearer TOKEN``; the tokens file holds only each token's sha256 (see
``load_tokens``). Checks, in order, each refusing before anything is stored: token (401), per-device rate
limit (429 with Retry-After), body size (413), JSON syntax (400), fields (422).

Server side: Python 3.10+, the ``serve`` extra (fastapi, uvicorn, sqlalchemy; psycopg for PostgreSQL).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``), which are
# imported inside ``create_app`` and could not be resolved from strings.
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from elma.errors import OffloadError

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "sha256:"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_RECORDS_PER_BATCH = 1000


@dataclass(frozen=True)
class ServeConfig:
    """``elma-serve``'s settings; the command-line flags map 1:1 onto these fields."""

    model: Optional[str] = None  # bundle or ELMA model folder; None: the shipped reference model
    tokens_file: Optional[str] = None  # device tokens (hashed), see ``load_tokens``; required to serve
    host: str = "127.0.0.1"  # loopback by default: expose on purpose, behind TLS (a reverse proxy)
    port: int = 8000
    db_url: str = "sqlite:///elma-records.sqlite3"  # SQLAlchemy URL; PostgreSQL: postgresql+psycopg://user@host/db
    backend: Optional[str] = None  # runtime backend (default: onnxruntime for bundles, torch for model folders)
    max_body_bytes: int = 2_200_000  # largest request body; a 1 MB passage (the device's limit) as JSON fits
    rate_per_s: float = 20.0  # sustained requests per second per device (token bucket refill)
    burst: int = 40  # requests a device may send at once (bucket size)
    releases_dir: Optional[str] = None  # release repository (elma publish) served under /v1/releases/; None: not served

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535 (got {self.port})")
        if self.max_body_bytes < 1024 or self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(f"max_body_bytes must be >= 1024, rate_per_s > 0, burst >= 1 (got {self.max_body_bytes}, "
                             f"{self.rate_per_s}, {self.burst})")


# ---- tokens ---------------------------------------------------------------------------------------------------

def hash_token(token: str) -> str:
    """``sha256:HEX`` of a token. Tokens are 256-bit random strings (``new_token``), so a fast hash is enough:
    there is nothing to brute-force that a slow KDF would protect (unlike passwords)."""
    return TOKEN_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_tokens(path: Path) -> Dict[str, str]:
    """Read a tokens file: ``{sha256 digest line: device id}``.

    Format: one device per line, ``DEVICE_ID sha256:HEX`` (64 hex digits); ``#`` starts a comment; blank lines
    are ignored. Device ids are 1-128 characters of letters, digits, ``.``, ``_``, ``-``. Make a line with
    ``elma-serve --tokens FILE --add-device ID`` (prints the token once) or
    ``printf %s "$TOKEN" | sha256sum``.

    Raises:
        OffloadError: missing file, malformed line, duplicate device or token, or no device at all.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise OffloadError(f"{path}: cannot read the tokens file ({err.strerror or err}); create it with "
                           f"`elma-serve --tokens {path} --add-device DEVICE_ID`") from err
    tokens: Dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if (len(parts) != 2 or not _DEVICE_ID.match(parts[0]) or not parts[1].startswith(TOKEN_PREFIX)
                or not re.fullmatch(r"[0-9a-f]{64}", parts[1][len(TOKEN_PREFIX):])):
            raise OffloadError(f"{path}:{n}: expected 'DEVICE_ID sha256:<64 lower-case hex digits>'")
        device, digest = parts
        if digest in tokens or device in tokens.values():
            raise OffloadError(f"{path}:{n}: device {device!r} or its token is listed twice")
        tokens[digest] = device
    if not tokens:
        raise OffloadError(f"{path}: no devices; add one with `elma-serve --tokens {path} --add-device DEVICE_ID`")
    return tokens


def add_device(path: Path, device_id: str) -> str:
    """Append a new device to the tokens file (created with mode 0600); returns its token (shown once)."""
    if not _DEVICE_ID.match(device_id):
        raise ValueError(f"device id must be 1-128 letters, digits, '.', '_' or '-' (got {device_id!r})")
    path = Path(path)
    if path.exists() and device_id in load_tokens(path).values():
        raise OffloadError(f"{path}: device {device_id!r} already has a token; remove its line to replace it")
    token = new_token()
    path.touch(mode=0o600, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{device_id} {hash_token(token)}\n")
    return token


# ---- rate limit -----------------------------------------------------------------------------------------------

class TokenBucket:
    """``burst`` requests at once, refilled at ``rate_per_s``; time from ``clock`` (seconds, monotonic)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1 (got {rate_per_s}, {burst})")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at_s = clock()

    def _refill(self) -> None:
        now_s = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now_s - self._at_s) * self.rate_per_s)
        self._at_s = now_s

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)


class RateLimiter:
    """One ``TokenBucket`` per device, thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: Dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, device: str) -> float:
        """0.0 when the request may proceed, else the seconds to wait."""
        with self._lock:
            bucket = self._buckets.get(device)
            if bucket is None:
                bucket = self._buckets[device] = TokenBucket(self.rate_per_s, self.burst, self.clock)
            return 0.0 if bucket.take() else bucket.wait_s()


# ---- record store ---------------------------------------------------------------------------------------------

class RecordStore:
    """Error records in a SQL database through SQLAlchemy Core (SQLite, PostgreSQL, ...), keyed by record id."""

    def __init__(self, db_url: str):
        import sqlalchemy as sa

        self.sa = sa
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            "error_records", self.metadata,
            sa.Column("record_id", sa.String(36), primary_key=True),
            sa.Column("device_id", sa.String(128), nullable=False, index=True),
            sa.Column("question", sa.Text, nullable=False),
            sa.Column("context", sa.Text, nullable=False),
            sa.Column("local_answer", sa.Text, nullable=False),
            sa.Column("local_no_answer", sa.Boolean, nullable=False),
            sa.Column("exit_layer", sa.Integer, nullable=False),
            sa.Column("num_layers", sa.Integer, nullable=False),
            sa.Column("unsolved", sa.Boolean, nullable=False),
            sa.Column("server_answer", sa.Text, nullable=True),
            sa.Column("corrected_answer", sa.Text, nullable=True),  # set by a person; `elma finetune` prefers it
            sa.Column("created_at_unix_s", sa.Float, nullable=False),  # on the device's clock
            sa.Column("received_at_unix_s", sa.Float, nullable=False),  # on the server's clock
        )
        try:
            self.engine = sa.create_engine(db_url, pool_pre_ping=True)
            self.metadata.create_all(self.engine)
        except Exception as err:  # bad URL, missing driver, database down: one message for the operator
            raise OffloadError(f"cannot open the record store {self.engine_url(db_url)} ({type(err).__name__}: {err})") from err

    @staticmethod
    def engine_url(db_url: str) -> str:
        """The URL without its password, for messages."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", db_url)

    def store(self, device_id: str, records: List[Dict[str, Any]]) -> int:
        """Insert the records not stored yet, in one transaction; returns how many were new."""
        sa = self.sa
        unique = {}
        for r in records:
            unique.setdefault(r["record_id"], r)
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    have = set(conn.execute(sa.select(self.table.c.record_id)
                                            .where(self.table.c.record_id.in_(list(unique)))).scalars())
                    now_s = time.time()
                    rows = [{**r, "device_id": device_id, "received_at_unix_s": now_s}
                            for rid, r in unique.items() if rid not in have]
                    if rows:
                        conn.execute(sa.insert(self.table), rows)
                return len(rows)
            except sa.exc.IntegrityError:  # the same record arrived concurrently on another connection: look again
                if attempt == 2:
                    raise
        return 0

    def all(self) -> List[Dict[str, Any]]:
        query = self.sa.select(self.table).order_by(self.table.c.created_at_unix_s, self.table.c.record_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count(self) -> int:
        sa = self.sa
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


# ---- answering ------------------------------------------------------------------------------------------------

class RuntimeAnswerer:
    """The full-depth model behind ``/v1/answer``: ``Runtime.ask`` with the no-exit policy."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.model = str(runtime.info.path)
        self.num_layers = runtime.num_layers

    @classmethod
    def open(cls, model: Optional[str], backend: Optional[str] = None) -> "RuntimeAnswerer":
        from elma.paths import default_model_dir
        from elma.runtime.engine import Runtime, is_bundle

        path = Path(model) if model else default_model_dir()
        if backend is None and not is_bundle(path):
            backend = "torch"
        return cls(Runtime.open(path, backend=backend, policy="none"))

    def __call__(self, question: str, context: str) -> Dict[str, Any]:
        a = self.runtime.ask(question, context)
        return {"text": a.text, "no_answer": a.no_answer, "exit_layer": a.exit_layer, "num_layers": a.num_layers,
                "latency_ms": a.latency_ms}

    def close(self) -> None:
        self.runtime.close()


# ---- the app --------------------------------------------------------------------------------------------------

class ApiError(Exception):
    """A refused request: HTTP status, a short code and a message saying what to fix."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def create_app(config: ServeConfig, answerer: Callable[[str, str], Dict[str, Any]], store: RecordStore,
               tokens: Dict[str, str], clock: Callable[[], float] = time.monotonic):
    """The FastAPI app. ``answerer(question, context) -> dict`` (``RuntimeAnswerer``), ``tokens`` from ``load_tokens``."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.security import HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from elma.runtime.engine import MAX_CONTEXT_CHARS, MAX_QUESTION_CHARS

    # strict: a body's types are the documented ones ("exit_layer": "3" or "unsolved": "no" is refused, not coerced)
    class AnswerRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
        context: str = Field(min_length=1, max_length=MAX_CONTEXT_CHARS)
        record_id: Optional[str] = Field(default=None, pattern=_UUID)

    class RecordIn(BaseModel):
        # allow_inf_nan: NaN is NULL to SQLite (a NOT NULL failure) and 1e999 parses to inf; both are refused here.
        # Text without NUL (PostgreSQL's text cannot hold it), layers within the INTEGER column (int4 on PostgreSQL).
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
        record_id: str = Field(pattern=_UUID)
        question: str = Field(max_length=MAX_QUESTION_CHARS, pattern=_NO_NUL)
        context: str = Field(max_length=MAX_CONTEXT_CHARS, pattern=_NO_NUL)
        local_answer: str = Field(pattern=_NO_NUL)
        local_no_answer: bool
        exit_layer: int = Field(ge=1, le=_MAX_INT4)
        num_layers: int = Field(ge=1, le=_MAX_INT4)
        unsolved: bool
        server_answer: Optional[str] = Field(default=None, pattern=_NO_NUL)
        created_at_unix_s: float

    class RecordsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        records: List[RecordIn] = Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)

    class ErrorBody(BaseModel):  # every refusal: {"error": {"code": ..., "message": ...}}
        error: Dict[str, str]

    # The OpenAPI schema (/docs, schemathesis) shows each body and the bearer token; checking stays in `device_of`
    # and `parse`, in the documented order (this dependency only reads the header, and never refuses).
    bearer = [Depends(HTTPBearer(auto_error=False, description="the device's token (elma-serve --add-device)"))]
    refusals = {status: {"model": ErrorBody} for status in (400, 401, 413, 422, 429)}

    def documented(model) -> Dict[str, Any]:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}

    limiter = RateLimiter(config.rate_per_s, config.burst, clock)
    app = FastAPI(title="ELMA offload server", version="1")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        logger.info("%s %s -> %d %s", request.method, request.url.path, err.status, err.code)
        return JSONResponse({"error": {"code": err.code, "message": err.message}}, status_code=err.status,
                            headers=err.headers)

    @app.exception_handler(HTTPException)  # Starlette's own refusals (unknown path 404, wrong method 405) in our shape
    async def http_error(request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return JSONResponse({"error": {"code": code, "message": f"{request.method} {request.url.path}: {err.detail}"}},
                            status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": {"code": "internal", "message": f"the server failed ({type(err).__name__}); see its log"}},
                            status_code=500)

    def device_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "no bearer token: send 'Authorization: Bearer TOKEN' (the device's token "
                           "file)", {"WWW-Authenticate": "Bearer"})
        device = tokens.get(hash_token(token.strip()))
        if device is None:
            raise ApiError(401, "unauthorized", "unknown token: check the device's token file against the server's "
                           "tokens file", {"WWW-Authenticate": "Bearer"})
        wait_s = limiter.take(device)
        if wait_s > 0:
            raise ApiError(429, "rate_limited", f"device {device} sends more than {config.rate_per_s:g} requests/s; "
                           f"retry in {wait_s:.2f} s", {"Retry-After": str(max(1, math.ceil(wait_s)))})
        return device

    async def parse(request: Request, model):
        length = request.headers.get("content-length", "")
        # isascii: "²".isdigit() is True; 16+ digits are over any limit (and int() refuses 4300+ digits)
        if length.isascii() and length.isdigit() and (len(length) > 15 or int(length) > config.max_body_bytes):
            raise ApiError(413, "too_large", f"the body is {length[:20]} bytes; the limit is {config.max_body_bytes}")
        body, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_body_bytes:
                    raise ApiError(413, "too_large", f"the body is over the limit of {config.max_body_bytes} bytes")
                body.append(chunk)
        except ClientDisconnect as err:  # the client went away mid-body: nothing to answer, nothing to log as a failure
            raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended") from err
        try:
            data = json.loads(b"".join(body).decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: "[[[[..." nested too deep
            raise ApiError(400, "malformed_json", f"the body is not valid UTF-8 JSON ({str(err)[:200]})") from err
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
            raise ApiError(422, "invalid_request", problems) from err

    @app.get("/v1/health")
    async def health():
        return {"status": "ok", "model": getattr(answerer, "model", None), "num_layers": getattr(answerer, "num_layers", None)}

    @app.post("/v1/answer", dependencies=bearer, openapi_extra=documented(AnswerRequest), responses=refusals)
    async def answer(request: Request):
        device = device_of(request)
        req = await parse(request, AnswerRequest)
        from elma.runtime.engine import validate_input

        try:
            validate_input(req.question, req.context)
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from err
        try:
            reply = await run_in_threadpool(answerer, req.question, req.context)
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from err
        logger.debug("answered device %s (record %s)", device, req.record_id)
        return reply

    if config.releases_dir is not None:
        releases_root = Path(config.releases_dir).resolve()

        @app.get("/v1/releases/{path:path}", dependencies=bearer, responses={**refusals, 404: {"model": ErrorBody}})
        async def releases(request: Request, path: str):
            device_of(request)
            target = release_file(releases_root, path)
            if target is None:
                raise ApiError(404, "not_found", f"no release file {path!r}")
            size = target.stat()
            response = FileResponse(target, stat_result=size)  # Range requests: 206 with Content-Range (resumable)
            check_range(response, request.headers, size.st_size)
            return response

    @app.post("/v1/records", dependencies=bearer, openapi_extra=documented(RecordsRequest), responses=refusals)
    async def records(request: Request):
        device = device_of(request)
        req = await parse(request, RecordsRequest)
        rows = [r.model_dump() for r in req.records]
        try:
            stored_new = await run_in_threadpool(store.store, device, rows)
        except Exception as err:
            logger.exception("record store failed")
            raise ApiError(503, "store_unavailable", f"the record store failed ({type(err).__name__}); retry later") from err
        return {"record_ids": list(dict.fromkeys(r["record_id"] for r in rows)), "stored_new": stored_new}

    return app


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads takes NaN and Infinity by default


_NO_NUL = r"^[^\x00]*$"
_MAX_INT4 = 2**31 - 1


def inline_schema(model) -> Dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place: an OpenAPI request body has no ``$defs`` to
    point into."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


def check_range(response, headers, size: int) -> None:
    """Refuse a Range header that ``response`` (a FileResponse) would refuse, in the server's JSON error shape
    (Starlette answers those in plain text). Starlette's own parser decides; before 0.39 it ignored Range."""
    http_range, if_range = headers.get("range"), headers.get("if-range")
    parse = getattr(response, "_parse_range_header", None)
    if http_range is None or parse is None or (if_range is not None and not response._should_use_range(if_range)):
        return
    from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

    try:
        parse(http_range, size)
    except MalformedRangeHeader as err:
        raise ApiError(400, "bad_range", f"Range {http_range[:100]!r}: {err.content}") from err
    except RangeNotSatisfiable as err:
        raise ApiError(416, "range_not_satisfiable", f"Range {http_range[:100]!r}: the file has {size} bytes",
                       {"Content-Range": f"bytes */{size}"}) from err


_RELEASE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def release_file(root: Path, path: str) -> Optional[Path]:
    """The file ``path`` names under the release repository ``root``, or None (hidden, escaping or missing)."""
    parts = path.split("/")
    if not parts or len(parts) > 4 or not all(_RELEASE_PART.match(p) for p in parts):
        return None
    target = root.joinpath(*parts)
    try:
        target.resolve().relative_to(root)
    except ValueError:  # a symlink out of the repository
        return None
    return target if target.is_file() else None


class BackgroundServer:
    """uvicorn serving ``app`` in a thread (tests, benchmarks): ``with BackgroundServer(app, port=p) as s: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        if port == 0:
            port = free_port(host)
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
        self.server.install_signal_handlers = lambda: None  # older uvicorn; not in the main thread
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "BackgroundServer":
        self.thread.start()
        deadline_s = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline_s:
                raise OffloadError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
