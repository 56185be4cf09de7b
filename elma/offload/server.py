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

The pieces, each in its own module: ``config`` (ServeConfig), ``auth`` (tokens), ``limits`` (rate limit), ``store``
(RecordStore), ``answerer`` (RuntimeAnswerer), ``app`` (create_app), ``background`` (BackgroundServer). This module
re-exports them under their old names.
"""

from elma.offload.answerer import RuntimeAnswerer
from elma.offload.app import MAX_RECORDS_PER_BATCH, UUID_PATTERN, ApiError, create_app, release_file
from elma.offload.auth import DEVICE_ID, TOKEN_PREFIX, add_device, hash_token, load_tokens, new_token
from elma.offload.background import BackgroundServer, free_port
from elma.offload.config import ServeConfig
from elma.offload.limits import RateLimiter, TokenBucket
from elma.offload.store import RecordStore

__all__ = ["ApiError", "BackgroundServer", "DEVICE_ID", "MAX_RECORDS_PER_BATCH", "RateLimiter", "RecordStore", "RuntimeAnswerer",
           "ServeConfig", "TOKEN_PREFIX", "TokenBucket", "UUID_PATTERN", "add_device", "create_app", "free_port", "hash_token",
           "load_tokens", "new_token", "release_file"]
