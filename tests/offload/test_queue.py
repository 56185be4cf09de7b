"""RecordQueue: records round-trip, pending/uploaded bookkeeping, and a writer killed with SIGKILL in a loop
never leaves a corrupt database, loses an acknowledged record or duplicates one."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elma.errors import QueueError
from elma.offload.queue import RecordQueue

ROOT = Path(__file__).resolve().parents[2]


def test_add_get_and_server_answer(tmp_path):
    with RecordQueue(tmp_path / "q.sqlite3") as q:
        rec = q.add("Who?", "Rollo led them.", "", exit_layer=3, num_layers=3, unsolved=True)
        assert rec.local_no_answer and rec.server_answer is None and not rec.uploaded and len(rec.record_id) == 36
        assert q.set_server_answer(rec.record_id, "Rollo") and not q.set_server_answer("nope", "x")
    with RecordQueue(tmp_path / "q.sqlite3") as q:  # reopened: it was on disk
        got = q.get(rec.record_id)
        assert got is not None and got.server_answer == "Rollo" and got.question == "Who?" and got.unsolved
        assert q._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_pending_batches_and_mark_uploaded(tmp_path):
    q = RecordQueue(tmp_path / "q.sqlite3")
    ids = [q.add(f"q{i}", "c", "a", 1, 2, False).record_id for i in range(5)]
    batches = []
    for batch in q.pending_batches(2):
        batches.append([r.record_id for r in batch])
        assert q.mark_uploaded(batches[-1]) == len(batch)
    assert [len(b) for b in batches] == [2, 2, 1] and sorted(sum(batches, [])) == sorted(ids)
    assert q.count() == 5 and q.count(pending_only=True) == 0 and q.mark_uploaded(ids) == 0
    assert list(q.pending_batches(2)) == []


def test_an_unmarked_batch_is_not_offered_again(tmp_path):
    q = RecordQueue(tmp_path / "q.sqlite3")
    for i in range(3):
        q.add(f"q{i}", "c", "a", 1, 2, False)
    assert [len(b) for b in q.pending_batches(2)] == [2, 1]


def test_bad_input_and_not_a_database(tmp_path):
    q = RecordQueue(tmp_path / "q.sqlite3")
    with pytest.raises(ValueError, match="exit_layer must be in 1..num_layers=2"):
        q.add("q", "c", "a", 3, 2, False)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueError, match="cannot open the offload queue"):
        RecordQueue(junk)


WRITER = """
import sys
from elma.offload.queue import RecordQueue
q = RecordQueue(sys.argv[1])
tag = sys.argv[2]
for i in range(100000):
    rec = q.add(f"{tag}-{i}", "context " * 50, "answer", 1, 2, True)
    sys.stdout.write(rec.record_id + " " + rec.question + "\\n")  # acknowledged: add() returned
    sys.stdout.flush()
"""


def test_sigkill_during_writes_never_corrupts_or_loses(tmp_path):
    db = tmp_path / "q.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acknowledged = {}
    for round_ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"r{round_}"], stdout=subprocess.PIPE,
                                text=True, env=env)
        first = proc.stdout.readline()  # wait until it writes, then let it run a little longer
        assert first, "the writer died before writing"
        time.sleep(0.005 * (round_ % 5) + 0.002 * round_)  # kill at varied points of the write loop
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        for line in (first + rest).splitlines():
            if line.count(" ") == 1:  # a line cut by the kill is not an acknowledgement
                record_id, question = line.split(" ")
                acknowledged[record_id] = question
        with sqlite3.connect(str(db)) as con:  # a fresh connection runs WAL recovery, as a restarted device would
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    q = RecordQueue(db)
    stored = {r.record_id: r.question for r in q.all()}
    assert q.integrity_check() == "ok"
    assert all(stored.get(k) == v for k, v in acknowledged.items()), "an acknowledged record was lost"
    questions = list(stored.values())
    assert len(questions) == len(set(questions)), "a record was stored twice"
    assert len(acknowledged) >= 15
