"""The record store and the records endpoint on a real PostgreSQL: a throwaway cluster on a loopback port
(``pg_cluster.PgCluster``: pgserver's binaries from the dev extra, or the system's). Skipped, with the reason, where
it cannot run."""

import threading
import uuid

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("psycopg", reason="psycopg (the serve extra) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from pg_cluster import PgCluster, PgUnavailable  # noqa: E402

from elma.offload.server import RecordStore, ServeConfig, create_app, hash_token  # noqa: E402


@pytest.fixture(scope="module")
def pg():
    try:
        cluster = PgCluster()
    except PgUnavailable as err:
        pytest.skip(str(err))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg):
    return pg.url


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


def test_concurrent_writers_store_each_record_once(pg_url):
    """Two stores (two replicas' connections) racing on overlapping batches: every record once, and the counts of
    new records they report add up to the records stored (ON CONFLICT DO NOTHING ... RETURNING)."""
    stores = [RecordStore(pg_url), RecordStore(pg_url)]
    try:
        batch = [record() for _ in range(200)]
        counts = []

        def write(store, rows):
            counts.append(store.store("jetson-01", rows))

        threads = [threading.Thread(target=write, args=(stores[i % 2], batch[i * 20:i * 20 + 120])) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = stores[0].all()
        assert len(rows) == len({r["record_id"] for r in rows}) == 200 and sum(counts) == 200
    finally:
        with stores[0].engine.begin() as conn:
            conn.execute(stores[0].table.delete())
        for s in stores:
            s.close()


def test_store_survives_a_postgres_restart(pg):
    """Acknowledged before the restart and after it: all there once; pool_pre_ping reconnects by itself."""
    store = RecordStore(pg.url)
    try:
        before, after = [record() for _ in range(5)], [record() for _ in range(5)]
        assert store.store("jetson-01", before) == 5
        pg.restart(mode="immediate")
        assert store.store("jetson-01", before + after) == 5
        assert sorted(r["record_id"] for r in store.all()) == sorted(r["record_id"] for r in before + after)
    finally:
        with store.engine.begin() as conn:
            conn.execute(store.table.delete())
        store.close()


def test_records_endpoint_while_postgres_is_down_is_a_503_with_retry_after(pg):
    store = RecordStore(pg.url)
    try:
        client = TestClient(create_app(ServeConfig(max_body_bytes=4096), lambda q, c: {}, store, {hash_token("t"): "d"}))
        batch = {"records": [record()]}
        pg._run("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "stop")
        try:
            down = client.post("/v1/records", json=batch, headers={"Authorization": "Bearer t"})
        finally:
            pg.start()
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "store_unavailable"
        up = client.post("/v1/records", json=batch, headers={"Authorization": "Bearer t"})  # the device's retry
        assert up.status_code == 200 and up.json()["stored_new"] == 1 and store.count() == 1
    finally:
        with store.engine.begin() as conn:
            conn.execute(store.table.delete())
        store.close()
