"""Device side of offloading: decide, ask the server within a deadline, queue the record, upload later.

    config = OffloadConfig("http://10.0.0.2:8000", token=read_token_file("device.token"))
    client = OffloadClient(config, RecordQueue(default_queue_path()))
    result = client.ask(runtime, question, passage)   # -> OffloadResult(text, offloaded, deferred, ...)
    client.upload_pending()                           # `elma sync --upload`

**Decision** (``offload_reason``, pure): a question is offloaded when the
runtime calls it ``unsolved`` (no exit confident by the last allowed layer, under
the runtime's policy: the model's calibrated default unless one was given), or,
if ``OffloadConfig.offload_no_answer_above`` is set, when the verdict is
no-answer but the best span came close (its score above that value).

**Never slower than the deadline.** Every question to offload is first written
to the device queue (durable before the call returns). Then, if the circuit
breaker lets it, the server is asked with retries and exponential back-off, all
inside ``deadline_ms``: each attempt's socket timeout is the time left. Past the
deadline, or with the breaker open, the local answer is returned marked
``deferred``; the record stays queued without a server answer and is uploaded
by ``upload_pending`` when the server is back.

**Why urllib.** The device runs JetPack's Python 3.8 and should not need
anything beyond the standard library for this: the requests are small JSON
POSTs to one server, the timeout we need is per socket operation (urllib's), and
connection pooling would save a TCP handshake on a loopback/LAN link only. A
proxy from the environment is ignored on purpose (the server is on the local
network); ``post_json`` is injectable, so tests and integrators can swap it.

Device side: Python 3.8 and the standard library only.
"""

import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from elma.errors import OffloadError, OffloadRejected
from elma.offload.queue import RecordQueue

logger = logging.getLogger(__name__)

API_ANSWER = "/v1/answer"
API_RECORDS = "/v1/records"
API_HEALTH = "/v1/health"


@dataclass(frozen=True)
class OffloadConfig:
    """How the device offloads (one per device; ``elma-ask``/``elma sync`` flags map onto these fields)."""

    server_url: str  # e.g. "http://10.0.0.2:8000"; the /v1/... paths are appended
    token: str  # this device's bearer token (the server keeps only its sha256)
    deadline_ms: float = 300.0  # budget of one offload, retries included; past it the local answer is returned
    retries: int = 2  # attempts after the first, while the deadline allows
    backoff_ms: float = 20.0  # wait before the first retry; doubles after each
    breaker_failures: int = 3  # consecutive failed offloads that open the circuit breaker
    breaker_reset_ms: float = 10_000.0  # an open breaker lets one trial request through after this long
    offload_no_answer_above: Optional[float] = None  # also offload a no-answer whose span score (span - null) is above this
    upload_batch_size: int = 100  # most records per POST /v1/records
    upload_max_bytes: int = 2_000_000  # most bytes of JSON per POST /v1/records (below the server's body limit)
    upload_timeout_ms: float = 10_000.0  # socket timeout of one upload request

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https:// (got {self.server_url!r})")
        if not self.token or any(c.isspace() for c in self.token):
            raise ValueError("the device token is empty or holds white space; check the token file")
        if self.deadline_ms <= 0 or self.backoff_ms < 0 or self.retries < 0:
            raise ValueError(f"deadline_ms must be positive and retries, backoff_ms not negative "
                             f"(got {self.deadline_ms}, {self.retries}, {self.backoff_ms})")
        if self.breaker_failures < 1 or self.breaker_reset_ms < 0 or self.upload_batch_size < 1:
            raise ValueError(f"breaker_failures and upload_batch_size must be at least 1 (got {self.breaker_failures}, "
                             f"{self.upload_batch_size})")

    def __repr__(self) -> str:  # never log the token
        return f"OffloadConfig(server_url={self.server_url!r}, deadline_ms={self.deadline_ms}, retries={self.retries})"

    def url(self, path: str) -> str:
        return self.server_url.rstrip("/") + path


def read_token_file(path: Union[str, os.PathLike]) -> str:
    """The device token: the file's content without surrounding white space.

    Raises:
        OffloadError: missing, unreadable or empty file.
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise OffloadError(f"{path}: cannot read the token file ({err.strerror or err}); ask the server's operator for "
                           f"this device's token") from err
    if not token:
        raise OffloadError(f"{path}: the token file is empty; it holds this device's bearer token on one line")
    return token


def default_queue_path() -> Path:
    """$ELMA_OFFLOAD_QUEUE, else ~/.local/share/elma/offload.sqlite3."""
    env = os.environ.get("ELMA_OFFLOAD_QUEUE")
    return Path(env) if env else Path.home() / ".local" / "share" / "elma" / "offload.sqlite3"


def offload_reason(answer, config: OffloadConfig) -> str:
    """Why ``answer`` (a runtime ``Answer``) should go to the server: "unsolved", "close no-answer", or "" (keep it)."""
    if answer.unsolved:
        return "unsolved"
    if config.offload_no_answer_above is not None and answer.no_answer and answer.score > config.offload_no_answer_above:
        return "close no-answer"
    return ""


class CircuitBreaker:
    """Stops asking a dead server: open after ``failure_threshold`` consecutive failures, one trial after ``reset_after_s``.

    closed -> (threshold failures) -> open -> (reset_after_s elapsed) -> half-open: one trial request;
    its success closes the breaker, its failure opens it again for another ``reset_after_s``.
    Pure bookkeeping: time comes from ``clock`` (seconds, monotonic), so tests inject one.
    """

    def __init__(self, failure_threshold: int, reset_after_s: float, clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1 or reset_after_s < 0:
            raise ValueError(f"failure_threshold must be >= 1 and reset_after_s >= 0 (got {failure_threshold}, {reset_after_s})")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self._failures = 0
        self._opened_at_s: Optional[float] = None
        self._trial = False  # a half-open trial is in flight
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at_s is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at_s >= self.reset_after_s else "open"

    def allow(self) -> bool:
        """May a request be sent now? In half-open state only one caller gets True until it reports back."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures, self._opened_at_s, self._trial = 0, None, False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or self._failures >= self.failure_threshold:
                self._opened_at_s = self.clock()
            self._trial = False


def post_json(url: str, payload: Dict[str, Any], token: str, timeout_s: float) -> Dict[str, Any]:
    """POST ``payload`` as JSON with a bearer token; the decoded JSON reply.

    Raises:
        OffloadRejected: 4xx other than 429 (retrying will not help; the server's message is included).
        OffloadError: network failure, timeout, 429 or 5xx, or a reply that is not JSON (worth retrying).
    """
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}", "Accept": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is local: no proxy
    try:
        with opener.open(request, timeout=timeout_s) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        message = _error_message(err)
        if err.code == 429 or err.code >= 500:
            raise OffloadError(f"{url}: HTTP {err.code}: {message}") from err
        raise OffloadRejected(f"{url}: HTTP {err.code}: {message}") from err
    except (urllib.error.URLError, socket.timeout, OSError, http.client.HTTPException) as err:
        raise OffloadError(f"{url}: server unreachable ({getattr(err, 'reason', err)})") from err
    except ValueError as err:
        raise OffloadError(f"{url}: the reply is not JSON ({err})") from err
    if not isinstance(reply, dict):
        raise OffloadError(f"{url}: the reply is not a JSON object; is this an ELMA server?")
    return reply


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(err.read().decode("utf-8"))
        return str(detail.get("error", {}).get("message") or detail)
    except (ValueError, OSError, AttributeError):
        return str(err.reason)


@dataclass(frozen=True)
class OffloadResult:
    """What the device answers, and where the answer came from."""

    text: str  # the answer returned to the user; "" when no-answer
    no_answer: bool
    offloaded: bool  # the server's answer is returned
    deferred: bool  # offload was wanted but the server did not answer in time: the local answer, record queued
    reason: str  # why it was offloaded ("unsolved", "close no-answer"), "" when answered locally
    record_id: Optional[str]  # the queued error record, None when nothing was queued
    attempts: int  # requests sent to the server
    offload_ms: float  # time spent on queueing and the server, 0 when not offloaded
    latency_ms: float  # local answer plus offload_ms
    local: Any  # the runtime's Answer

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["local"] = self.local.to_dict() if hasattr(self.local, "to_dict") else self.local
        return d


@dataclass(frozen=True)
class SyncReport:
    """What ``upload_pending`` did."""

    uploaded: int  # records the server acknowledged (now marked uploaded on the device)
    stored_new: int  # of those, records the server did not have yet
    batches: int
    pending_left: int  # records still waiting (0 after a full sync)


class OffloadClient:
    """Offloads answers per ``OffloadConfig`` and keeps the error records in ``queue``.

    ``post``, ``clock`` (seconds) and ``sleep`` are injectable for tests.
    """

    def __init__(self, config: OffloadConfig, queue: RecordQueue, breaker: Optional[CircuitBreaker] = None,
                 post: Callable[..., Dict[str, Any]] = post_json, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.queue = queue
        self.breaker = breaker or CircuitBreaker(config.breaker_failures, config.breaker_reset_ms / 1000.0, clock)
        self.post = post
        self.clock = clock
        self.sleep = sleep

    def ask(self, runtime, question: str, context: str, **ask_options) -> OffloadResult:
        """``runtime.ask`` then ``resolve``."""
        return self.resolve(question, context, runtime.ask(question, context, **ask_options))

    def resolve(self, question: str, context: str, local) -> OffloadResult:
        """The answer to return for ``local`` (a runtime ``Answer``): local, the server's, or local marked deferred."""
        reason = offload_reason(local, self.config)
        if not reason:
            return OffloadResult(local.text, local.no_answer, False, False, "", None, 0, 0.0, local.latency_ms, local)
        began_s = self.clock()
        deadline_s = began_s + self.config.deadline_ms / 1000.0
        record = self.queue.add(question, context, local.text, local.exit_layer, local.num_layers, local.unsolved,
                                local_no_answer=local.no_answer)
        reply, attempts = self._answer_within(deadline_s, {"record_id": record.record_id, "question": question,
                                                           "context": context})
        if reply is not None:
            text = str(reply.get("text", ""))
            self.queue.set_server_answer(record.record_id, text)
        offload_ms = (self.clock() - began_s) * 1000.0
        if reply is None:
            logger.info("record %s deferred (%s): server gave no answer within %.0f ms", record.record_id, reason,
                        self.config.deadline_ms)
            return OffloadResult(local.text, local.no_answer, False, True, reason, record.record_id, attempts, offload_ms,
                                 local.latency_ms + offload_ms, local)
        return OffloadResult(text, bool(reply.get("no_answer", text == "")), True, False, reason, record.record_id,
                             attempts, offload_ms, local.latency_ms + offload_ms, local)

    def _answer_within(self, deadline_s: float, payload: Dict[str, Any]):
        """(server reply or None, attempts) with retries and back-off, never past ``deadline_s``."""
        attempts, backoff_s = 0, self.config.backoff_ms / 1000.0
        while attempts <= self.config.retries:
            left_s = deadline_s - self.clock()
            if left_s <= 0.001:
                break
            if not self.breaker.allow():
                logger.debug("circuit breaker %s: not asking the server", self.breaker.state)
                break
            attempts += 1
            try:
                reply = self.post(self.config.url(API_ANSWER), payload, self.config.token, left_s)
            except OffloadRejected as err:
                # The server is alive but refuses (bad token, oversize): no retry, and no reason to open the breaker.
                self.breaker.record_success()
                logger.warning("offload refused: %s", err)
                break
            except OffloadError as err:
                self.breaker.record_failure()
                logger.debug("offload attempt %d failed: %s", attempts, err)
                wait_s = min(backoff_s, deadline_s - self.clock())
                if wait_s > 0 and attempts <= self.config.retries:  # no wait after the last attempt
                    self.sleep(wait_s)
                backoff_s *= 2
                continue
            self.breaker.record_success()
            return reply, attempts
        return None, attempts

    def upload_pending(self) -> SyncReport:
        """Upload every pending record in batches; each batch is marked uploaded once the server acknowledged it.

        Exactly once: the server stores records by ``record_id``, so a batch sent again (the device died between
        the acknowledgement and marking) is stored once.

        Raises:
            OffloadError: the server is unreachable or refused a batch (what was acknowledged before stays marked).
        """
        uploaded = stored_new = batches = 0
        for pending in self.queue.pending_batches(self.config.upload_batch_size):
            for chunk in _chunks_by_size(pending, self.config.upload_max_bytes):
                try:
                    reply = self.post(self.config.url(API_RECORDS), {"records": chunk}, self.config.token,
                                      self.config.upload_timeout_ms / 1000.0)
                except OffloadError as err:
                    raise type(err)(f"{err}; {uploaded} records uploaded before, {self.queue.count(pending_only=True)} "
                                    f"still pending (run `elma sync --upload` again)") from err
                acknowledged = [str(i) for i in reply.get("record_ids", [])]
                if sorted(acknowledged) != sorted(r["record_id"] for r in chunk):
                    raise OffloadError(f"the server acknowledged {len(acknowledged)} of {len(chunk)} records; "
                                       f"is it an ELMA server?")
                self.queue.mark_uploaded(acknowledged)
                uploaded += len(chunk)
                stored_new += int(reply.get("stored_new", 0))
                batches += 1
        report = SyncReport(uploaded, stored_new, batches, self.queue.count(pending_only=True))
        logger.info("uploaded %d records in %d batches (%d new on the server)", uploaded, batches, stored_new)
        return report


def _chunks_by_size(records, max_bytes: int) -> List[List[Dict[str, Any]]]:
    """Records as upload dicts, in chunks whose JSON stays under ``max_bytes`` (a larger record goes alone)."""
    chunks: List[List[Dict[str, Any]]] = []
    size = 0
    for r in records:
        d = r.to_dict()
        d.pop("uploaded")
        n = len(json.dumps(d, ensure_ascii=False).encode("utf-8")) + 2
        if not chunks or size + n > max_bytes:
            chunks.append([])
            size = 16  # {"records": []}
        chunks[-1].append(d)
        size += n
    return chunks


class BackgroundUploader:
    """Uploads pending records every ``interval_s`` from a daemon thread (interactive ``elma-ask``).

    Failures (server still away) are logged at debug level and retried at the next tick; ``stop`` waits for the
    upload in progress, so the queue is never closed under it.
    """

    def __init__(self, client: OffloadClient, interval_s: float = 30.0):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive (got {interval_s})")
        self.client = client
        self.interval_s = interval_s
        self.uploaded = 0  # records uploaded by this thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="elma-upload", daemon=True)

    def start(self) -> "BackgroundUploader":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:  # one upload right away, even when stopped early (``stop`` then waits for it)
            if self.client.queue.count(pending_only=True):
                try:
                    self.uploaded += self.client.upload_pending().uploaded
                except OffloadError as err:
                    logger.debug("background upload postponed: %s", err)
            if self._stop.wait(self.interval_s):
                return

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
