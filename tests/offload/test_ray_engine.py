"""``elma-serve --engine ray`` on a real Ray Serve: one deployment per topology (a start costs seconds), a tiny bundle.

In both topologies (split: ingress -> model deployment; combined: the model inside the ingress replica) the contract of
the uvicorn engine holds (tokens, JSON errors, records stored once), concurrent questions are batched into
``Runtime.ask_batch``, and an overload is a JSON 503 with ``Retry-After``, never a hang.

``ELMA_RAY_ADDRESS=auto`` runs the tests on a Ray already started (``ray start --head``), else a Ray is started here.
"""

import os
import threading
import time
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve", reason="Ray Serve (the serve extra) is not installed")
httpx = pytest.importorskip("httpx")

from elma.offload.config import RayConfig  # noqa: E402
from elma.offload.server import RecordStore, ServeConfig, free_port, hash_token  # noqa: E402

TOKEN = "ray-device-token"
QUESTION, CONTEXT = "Who led the raiders?", "The Normans were led by Rollo, who agreed to swear fealty to the king."


@pytest.fixture(scope="module", params=["split", "combined"])
def served(request, tiny_bundles, tmp_path_factory):
    """One Ray Serve per topology (pytest runs every test on one before starting the other); the combined one with
    Server-Timing on, the split one with it off (the default: the API unchanged)."""
    from elma.offload import ray_engine

    topology = request.param
    bundle = tiny_bundles.bundle("bert")
    db = tmp_path_factory.mktemp("ray") / "records.sqlite3"
    config = ServeConfig(model=str(bundle), port=free_port(), db_url=f"sqlite:///{db}", rate_per_s=1e6, burst=10**6,
                         max_body_bytes=8192)
    # 8 questions fit in a replica at once, 4 more may wait; batches of up to 4 that wait 50 ms to fill
    ray_config = RayConfig(address=os.environ.get("ELMA_RAY_ADDRESS"), topology=topology, replicas=1, max_batch_size=4,
                           batch_wait_timeout_s=0.05, max_ongoing_requests=8, max_queued_requests=4, intra_op_threads=1,
                           server_timing=topology == "combined")
    ray_engine.start(config, ray_config, {hash_token(TOKEN): "jetson-01"})
    try:
        yield {"url": f"http://127.0.0.1:{config.port}", "bundle": bundle, "db_url": config.db_url, "topology": topology}
    finally:
        ray_engine.stop()  # Serve shut down even on a joined test cluster: the next run picks its own port


def post(served, path, body=None, token=TOKEN, content=None, timeout_s=60.0):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(served["url"] + path, json=body, content=content, headers=headers, timeout=timeout_s)


def model_stats(served):
    """The model replica's counters: the model deployment's (split), or the one ingress replica's (combined)."""
    from ray import serve

    from elma.offload.ray_engine import APP_NAME, COMBINED_DEPLOYMENT, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, replica_pids

    deployment = COMBINED_DEPLOYMENT if served["topology"] == "combined" else MODEL_DEPLOYMENT
    assert set(replica_pids(attempts=1)) == ({COMBINED_DEPLOYMENT} if served["topology"] == "combined"
                                             else {MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT})
    return serve.get_deployment_handle(deployment, APP_NAME).describe.remote().result(timeout_s=60)


def record():
    return {"record_id": str(uuid.uuid4()), "question": QUESTION, "context": CONTEXT, "local_answer": "",
            "local_no_answer": True, "exit_layer": 1, "num_layers": 3, "unsolved": True, "server_answer": None,
            "created_at_unix_s": 1.0}


def test_same_contract_as_the_uvicorn_engine(served):
    from elma.offload.answerer import RuntimeAnswerer

    health = httpx.get(served["url"] + "/v1/health", timeout=60).json()
    assert health == {"status": "ok", "model": str(served["bundle"]), "num_layers": 3}
    reply = post(served, "/v1/answer", {"question": QUESTION, "context": CONTEXT})
    assert reply.status_code == 200, reply.text
    local = RuntimeAnswerer.open(str(served["bundle"]))
    try:
        expected = local(QUESTION, CONTEXT)
    finally:
        local.close()
    got = reply.json()
    assert (got["text"], got["no_answer"], got["exit_layer"], got["num_layers"]) == \
        (expected["text"], expected["no_answer"], 3, 3)  # full depth, the same answer as the runtime's
    if served["topology"] == "combined":  # --server-timing: time in the app, and awaiting the model within it
        from elma.offload.timing import parse_server_timing

        timing = parse_server_timing(reply.headers["server-timing"])
        assert set(timing) == {"app", "model"} and 0 < timing["model"] <= timing["app"], timing
    else:
        assert "server-timing" not in reply.headers
    for response, status, code in [
        (post(served, "/v1/answer", {"question": QUESTION, "context": CONTEXT}, token="wrong"), 401, "unauthorized"),
        (post(served, "/v1/answer", content=b"{not json"), 400, "malformed_json"),
        (post(served, "/v1/answer", {"question": QUESTION}), 422, "invalid_request"),
        (post(served, "/v1/answer", {"question": "", "context": CONTEXT}), 422, "invalid_request"),
        (post(served, "/v1/answer", content=b"x" * 9000), 413, "too_large"),
    ]:
        assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_records_are_stored_once_through_the_ingress(served):
    batch = {"records": [record(), record()]}
    first, again = post(served, "/v1/records", batch), post(served, "/v1/records", batch)
    assert first.status_code == again.status_code == 200
    assert first.json()["stored_new"] == 2 and again.json()["stored_new"] == 0
    store = RecordStore(served["db_url"])
    try:
        ids = [r["record_id"] for r in store.all()]
    finally:
        store.close()
    assert sorted(r["record_id"] for r in batch["records"]) == sorted(set(ids) & {r["record_id"] for r in batch["records"]})
    assert len(ids) == len(set(ids))


def test_concurrent_questions_share_batches(served):
    before = model_stats(served)
    replies, barrier = [], threading.Barrier(8)

    def ask():  # as a device does: a 503 is retried after its Retry-After (8 at once sit at the replica's limit)
        barrier.wait()
        for _ in range(5):
            reply = post(served, "/v1/answer", {"question": QUESTION, "context": CONTEXT})
            if reply.status_code != 503:
                break
            time.sleep(float(reply.headers["Retry-After"]))
        replies.append(reply)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
    assert len({r.json()["text"] for r in replies}) == 1
    after = model_stats(served)
    answered, runs = after["answered"] - before["answered"], after["runs"] - before["runs"]
    assert answered == 8 and runs < answered, (answered, runs)  # some questions shared a Runtime.ask_batch
    assert after["largest_batch"] > 1, after


def test_overload_is_a_json_503_with_retry_after_and_recovers(served):
    replies, barrier = [], threading.Barrier(48)

    def ask():
        barrier.wait()
        try:
            replies.append(post(served, "/v1/answer", {"question": QUESTION, "context": CONTEXT}, timeout_s=120))
        except httpx.TimeoutException as err:  # a hang: recorded, and fails the test below
            replies.append(err)

    threads = [threading.Thread(target=ask) for _ in range(48)]  # 48 at once against room for 8 + 4 queued
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, httpx.Response) for r in replies), "a request hung"
    assert {r.status_code for r in replies} <= {200, 503}
    refused = [r for r in replies if r.status_code == 503]
    assert refused, "no request was refused at 48 concurrent against a queue of 4"
    for r in refused:
        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded", (r.headers, r.text)
    assert post(served, "/v1/answer", {"question": QUESTION, "context": CONTEXT}).status_code == 200


def test_combined_replicas_share_the_rate_limit():
    """Each combined replica keeps its own token buckets: N replicas at rate / N make the device's rate the configured
    one (with autoscaling: divided by the minimum, never below a burst of 1)."""
    from elma.offload.ray_engine import per_replica_limits

    config = ServeConfig(rate_per_s=20.0, burst=40)
    assert per_replica_limits(config, RayConfig(topology="combined", replicas=2)) == \
        ServeConfig(rate_per_s=10.0, burst=20)
    scaled = per_replica_limits(config, RayConfig(topology="combined", min_replicas=0, max_replicas=4))
    assert (scaled.rate_per_s, scaled.burst) == (20.0, 40)
    assert per_replica_limits(ServeConfig(burst=3), RayConfig(replicas=4)).burst == 1
