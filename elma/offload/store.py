"""The record store: devices' error records in a SQL database through SQLAlchemy Core, keyed by record id."""

import re
import time
from typing import Any, Dict, List

from elma.errors import OffloadError


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
        """Insert the records not stored yet, in one transaction; returns how many were new.

        Exactly once under concurrency: ``INSERT ... ON CONFLICT (record_id) DO NOTHING`` (PostgreSQL, SQLite), so two
        replicas storing the same record at once store it once, and the count comes from ``RETURNING``. The call
        returns only after the transaction committed: the server acknowledges a record only once it is durable.
        """
        unique: Dict[str, Dict[str, Any]] = {}
        for r in records:
            unique.setdefault(r["record_id"], r)
        if not unique:
            return 0
        now_s = time.time()
        rows = [{**r, "device_id": device_id, "received_at_unix_s": now_s} for r in unique.values()]
        insert = self._insert_ignoring_duplicates()
        if insert is None:
            return self._store_checked(rows)
        with self.engine.begin() as conn:  # commits on leaving the block, before we return
            return len(conn.execute(insert.returning(self.table.c.record_id), rows).all())

    def _insert_ignoring_duplicates(self):
        """``INSERT ... ON CONFLICT DO NOTHING`` for the dialects that have it, else None."""
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            return None
        return insert(self.table).on_conflict_do_nothing(index_elements=[self.table.c.record_id])

    def _store_checked(self, rows: List[Dict[str, Any]]) -> int:
        """Other databases: look up the ids, insert the rest; a concurrent duplicate (IntegrityError) looks again."""
        sa = self.sa
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    have = set(conn.execute(sa.select(self.table.c.record_id)
                                            .where(self.table.c.record_id.in_([r["record_id"] for r in rows]))).scalars())
                    new = [r for r in rows if r["record_id"] not in have]
                    if new:
                        conn.execute(sa.insert(self.table), new)
                return len(new)
            except sa.exc.IntegrityError:
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
