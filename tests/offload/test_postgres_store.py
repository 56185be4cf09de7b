"""The record store and the records endpoint on a real PostgreSQL 15: a throwaway cluster run by an unprivileged
user on a loopback port (PostgreSQL refuses to run as root). Skipped, with the reason, where it cannot run."""

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("psycopg", reason="psycopg (the serve extra) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from elma.offload.server import RecordStore, ServeConfig, create_app, free_port, hash_token  # noqa: E402

PG_BIN = Path(os.environ.get("ELMA_PG_BIN", "/usr/lib/postgresql/15/bin"))


def run_as(user, argv, **kw):
    """``argv`` as ``user`` when we are root (runuser), else as ourselves."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def pg_url():
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (install postgresql-15 or set ELMA_PG_BIN)")
    user = "nobody"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root and there is no 'nobody' user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="elma-pg-"))  # under /tmp: the unprivileged user can reach it
    if os.geteuid() == 0:
        shutil.chown(root, user=user)
    data, port = root / "data", free_port()
    proc = run_as(user, [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "elma", "-E", "UTF8", "--no-sync"])
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {proc.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    proc = run_as(user, [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "30", "start"])
    if proc.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {(proc.stderr + log).strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://elma@127.0.0.1:{port}/postgres"
    finally:
        run_as(user, [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def record(**over):
    r = {"record_id": str(uuid.uuid4()), "question": "Who led the raiders?", "context": "Rollo led them.",
         "local_answer": "", "local_no_answer": True, "exit_layer": 2, "num_layers": 3, "unsolved": True,
         "server_answer": None, "created_at_unix_s": 1.5}
    r.update(over)
    return r


def test_store_is_idempotent_on_postgres(pg_url):
    store = RecordStore(pg_url)
    try:
        batch = [record(), record(server_answer="Rollo")]
        assert store.store("jetson-01", batch) == 2
        assert store.store("jetson-01", batch + [record()]) == 1
        rows = store.all()
        assert len(rows) == 3 and rows[1]["server_answer"] in (None, "Rollo") and all(r["unsolved"] is True for r in rows)
    finally:
        with store.engine.begin() as conn:
            conn.execute(store.table.delete())
        store.close()


def test_records_endpoint_on_postgres(pg_url):
    store = RecordStore(pg_url)
    try:
        app = create_app(ServeConfig(max_body_bytes=4096), lambda q, c: {}, store, {hash_token("t"): "jetson-01"})
        client = TestClient(app)
        batch = {"records": [record(), record()]}
        auth = {"Authorization": "Bearer t"}
        assert client.post("/v1/records", json=batch, headers=auth).json()["stored_new"] == 2
        assert client.post("/v1/records", json=batch, headers=auth).json()["stored_new"] == 0
        assert client.post("/v1/records", json=batch, headers={"Authorization": "Bearer x"}).status_code == 401
        assert client.post("/v1/records", content=b"{oops", headers=auth).status_code == 400
        assert store.count() == 2
    finally:
        with store.engine.begin() as conn:
            conn.execute(store.table.delete())
        store.close()
