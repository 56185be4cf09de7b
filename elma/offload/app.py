"""The offload server's FastAPI app: token check, rate limit, body limits, JSON errors, answer and records endpoints.

The API contract is in ``elma.offload.server``'s docstring.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``), which are
# imported inside ``create_app`` and could not be resolved from strings.
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from elma.offload.auth import hash_token
from elma.offload.config import ServeConfig
from elma.offload.limits import RateLimiter
from elma.offload.store import RecordStore

logger = logging.getLogger(__name__)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_RECORDS_PER_BATCH = 1000
_NO_NUL = r"^[^\x00]*$"
_MAX_INT4 = 2**31 - 1  # PostgreSQL's integer (int4)


class ApiError(Exception):
    """A refused request: HTTP status, a short code and a message saying what to fix."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def create_app(config: ServeConfig, answerer: Callable[[str, str], Dict[str, Any]], store: RecordStore,
               tokens: Dict[str, str], clock: Callable[[], float] = time.monotonic):
    """The FastAPI app. ``answerer(question, context) -> dict`` (``RuntimeAnswerer``), ``tokens`` from ``load_tokens``.

    An answerer with ``async answer_async(question, context)`` and ``async describe() -> {"model", "num_layers"}``
    (``elma.offload.ray_engine``) is awaited instead; it may raise ``ApiError`` (503 when overloaded).
    """
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
        record_id: Optional[str] = Field(default=None, pattern=UUID_PATTERN)

    class RecordIn(BaseModel):
        # allow_inf_nan: NaN is NULL to SQLite (a NOT NULL failure) and 1e999 parses to inf; both are refused here.
        # Text without NUL (PostgreSQL's text cannot hold it), layers within the INTEGER column (int4 on PostgreSQL).
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
        record_id: str = Field(pattern=UUID_PATTERN)
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
        describe = getattr(answerer, "describe", None)  # an answerer elsewhere (a Ray deployment) says it asynchronously
        info = await describe() if describe is not None else {"model": getattr(answerer, "model", None),
                                                              "num_layers": getattr(answerer, "num_layers", None)}
        return {"status": "ok", **info}

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
            answer_async = getattr(answerer, "answer_async", None)  # a Ray deployment handle: awaited, not threaded
            reply = await (answer_async(req.question, req.context) if answer_async is not None
                           else run_in_threadpool(answerer, req.question, req.context))
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
            raise ApiError(503, "store_unavailable", f"the record store failed ({type(err).__name__}); retry in 1 s",
                           {"Retry-After": "1"}) from err
        return {"record_ids": list(dict.fromkeys(r["record_id"] for r in rows)), "stored_new": stored_new}

    return app


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads takes NaN and Infinity by default


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
