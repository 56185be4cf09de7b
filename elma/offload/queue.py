"""The device's error dataset: every offloaded or unanswered question, stored durably in SQLite.

    q = RecordQueue("/var/lib/elma/offload.sqlite3")
    rec = q.add("Who led the raiders?", passage, local_answer="", exit_layer=6, num_layers=6, unsolved=True)
    q.set_server_answer(rec.record_id, "Rollo")           # when the server answered in time
    for batch in q.pending_batches(100): ...; q.mark_uploaded([r.record_id for r in batch])

**Durability.** The database runs in WAL mode with ``synchronous=FULL``: a
transaction is on disk (WAL fsynced) when ``COMMIT`` returns, so a record that
``add`` returned survives a kill -9 or a power cut, and SQLite's journal keeps
the file consistent whatever instant the process dies at
(https://www.sqlite.org/wal.html, https://www.sqlite.org/pragma.html#pragma_synchronous).
Each record gets a random UUID when it is created; the server stores records
by that id, so uploading a record twice (a crash between the server's
acknowledgement and ``mark_uploaded``) stores it once.

Device side: Python 3.8 and the standard library only.
"""

import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from elma.errors import QueueError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_COLUMNS = ("record_id", "question", "context", "local_answer", "local_no_answer", "exit_layer", "num_layers", "unsolved",
            "server_answer", "created_at_unix_s", "uploaded")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,          -- uuid4, made on the device; the server is idempotent by it
    question TEXT NOT NULL,
    context TEXT NOT NULL,
    local_answer TEXT NOT NULL,          -- '' when the device said no-answer
    local_no_answer INTEGER NOT NULL,
    exit_layer INTEGER NOT NULL,         -- 1-based layer the device stopped at
    num_layers INTEGER NOT NULL,
    unsolved INTEGER NOT NULL,           -- no exit was confident by the last allowed layer
    server_answer TEXT,                  -- NULL until the server answered ('' = server said no-answer)
    created_at_unix_s REAL NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0  -- 1 once the server acknowledged it (POST /v1/records)
);
CREATE INDEX IF NOT EXISTS records_pending ON records (uploaded, created_at_unix_s);
"""


@dataclass(frozen=True)
class ErrorRecord:
    """One question the device could not settle (or offloaded), as stored on the device and uploaded."""

    record_id: str  # uuid4 hex string
    question: str
    context: str
    local_answer: str  # "" when the device said no-answer
    local_no_answer: bool
    exit_layer: int  # 1-based
    num_layers: int
    unsolved: bool
    server_answer: Optional[str]  # None until the server answered
    created_at_unix_s: float  # wall clock (time.time()) when the record was made
    uploaded: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class RecordQueue:
    """SQLite-backed, durable queue of ``ErrorRecord``; safe to share between threads of one process.

    Args:
        path: database file (created with its folder if missing).
        busy_timeout_ms: how long a write waits for another process's lock before failing.

    Raises:
        QueueError: the file cannot be opened, or is not a queue database.
    """

    def __init__(self, path: Union[str, os.PathLike], busy_timeout_ms: int = 5000):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; each write is an explicit BEGIN IMMEDIATE ... COMMIT.
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_ms / 1000.0)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"{self.path}: SQLite refused WAL mode (got {mode}); put the queue on a local file system")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise QueueError(f"{self.path}: cannot open the offload queue ({err}); move the file away to start a new "
                             f"queue") from err
        except OSError as err:
            raise QueueError(f"{self.path}: cannot create the offload queue ({err})") from err

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "RecordQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` for every row in one transaction; durable when this returns."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    changed = 0
                    for row in rows:
                        changed += self._db.execute(sql, tuple(row)).rowcount
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise QueueError(f"{self.path}: cannot write the offload queue ({err})") from err
        return changed

    def add(self, question: str, context: str, local_answer: str, exit_layer: int, num_layers: int, unsolved: bool,
            local_no_answer: Optional[bool] = None, server_answer: Optional[str] = None,
            record_id: Optional[str] = None) -> ErrorRecord:
        """Store a new record; it is on disk when this returns.

        Args:
            local_no_answer: default: ``local_answer == ""``.
            record_id: default: a fresh uuid4.
        """
        if not 1 <= exit_layer <= num_layers:
            raise ValueError(f"exit_layer must be in 1..num_layers={num_layers} (got {exit_layer})")
        record = ErrorRecord(record_id or str(uuid.uuid4()), question, context, local_answer,
                             local_answer == "" if local_no_answer is None else bool(local_no_answer), int(exit_layer),
                             int(num_layers), bool(unsolved), server_answer, time.time(), False)
        values = [getattr(record, c) for c in _COLUMNS]
        self._write(f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", [values])
        logger.debug("queued record %s (unsolved=%s)", record.record_id, record.unsolved)
        return record

    def set_server_answer(self, record_id: str, server_answer: str) -> bool:
        """Record the server's answer (durably); False when no such record."""
        return self._write("UPDATE records SET server_answer = ? WHERE record_id = ?", [(server_answer, record_id)]) == 1

    def mark_uploaded(self, record_ids: Sequence[str]) -> int:
        """Mark records as acknowledged by the server, in one transaction; returns how many changed."""
        return self._write("UPDATE records SET uploaded = 1 WHERE record_id = ? AND uploaded = 0", [(r,) for r in record_ids])

    def _select(self, where: str = "", params: Sequence[Any] = (), limit: Optional[int] = None) -> List[ErrorRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM records {where} ORDER BY created_at_unix_s, record_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            try:
                rows = self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as err:
                raise QueueError(f"{self.path}: cannot read the offload queue ({err})") from err
        return [_record(row) for row in rows]

    def get(self, record_id: str) -> Optional[ErrorRecord]:
        found = self._select("WHERE record_id = ?", (record_id,))
        return found[0] if found else None

    def all(self) -> List[ErrorRecord]:
        return self._select()

    def pending(self, limit: Optional[int] = None) -> List[ErrorRecord]:
        """Records not yet acknowledged by the server, oldest first."""
        return self._select("WHERE uploaded = 0", (), limit)

    def pending_batches(self, batch_size: int) -> Iterator[List[ErrorRecord]]:
        """Pending records in batches; the caller marks each batch uploaded before asking for the next."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        seen = set()  # a batch the caller did not mark is not offered again (no endless loop)
        while True:
            batch = [r for r in self.pending(batch_size + len(seen)) if r.record_id not in seen][:batch_size]
            if not batch:
                return
            seen.update(r.record_id for r in batch)
            yield batch

    def count(self, pending_only: bool = False) -> int:
        sql = "SELECT COUNT(*) FROM records" + (" WHERE uploaded = 0" if pending_only else "")
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: "ok" for a sound database."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


def _record(row: Sequence[Any]) -> ErrorRecord:
    values = dict(zip(_COLUMNS, row))
    for flag in ("local_no_answer", "unsolved", "uploaded"):
        values[flag] = bool(values[flag])
    return ErrorRecord(**values)
