"""Fault runs of ``elma-serve --engine ray`` on loopback: overload, a replica killed with SIGKILL, PostgreSQL restarted.

    python benchmarks/offload_faults.py --model BUNDLE --out benchmarks/results/offload_faults.json

Starts its own PostgreSQL (tests/offload/pg_cluster.py: pgserver's binaries or the system's) and ``elma-serve --engine
ray --replicas 2`` (a Ray started by elma-serve; no other Ray may run on this machine: replicas are found with
``ray.init(address="auto")`` and each deployment's ``describe``). Devices are threads that behave like ``OffloadClient``: a batch of
records is retried, unchanged, until the server acknowledges it (HTTP 200). Checks, each counted in the JSON:

1. overload: ``--overload-clients`` clients at once against a queue of ``--max-queued-requests``: every refusal is a
   429 or 503 with ``Retry-After`` and our JSON error; no request hangs (client timeout ``--timeout-s``);
2. ``kill -9`` of a model replica, then of the ingress replica, under load: every acknowledged record stored exactly
   once, and /v1/answer answers 200 again by itself (seconds to recover recorded);
3. PostgreSQL stopped like a crash (``pg_ctl -m immediate``) and started again under load: records acknowledged
   before and after all stored exactly once.

Correctness only; the timings in it are not throughput figures (see offload_matrix.py for those).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests" / "offload"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

QUESTION = "Who was the leader of the Norse raiders?"
CONTEXT = ("The Normans were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
           "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")


def record() -> dict:
    return {"record_id": str(uuid.uuid4()), "question": QUESTION, "context": CONTEXT, "local_answer": "",
            "local_no_answer": True, "exit_layer": 2, "num_layers": 6, "unsolved": True, "server_answer": None,
            "created_at_unix_s": time.time()}


def is_json_error(response) -> bool:
    try:
        return isinstance(response.json().get("error", {}).get("code"), str)
    except ValueError:
        return False


class Devices:
    """Threads that upload records (retrying a batch until acknowledged) and ask questions, until ``stop``."""

    def __init__(self, url: str, token: str, writers: int, askers: int, timeout_s: float):
        import httpx

        self.url, self.token, self.timeout_s = url, token, timeout_s
        self.client = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=writers + askers + 4))
        self.acked: List[str] = []
        self.statuses: Counter = Counter()
        self.refusals_without_retry_after = 0
        self.hangs = 0
        self.last_answer_ok_s = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True) for _ in range(writers)]
        self.threads += [threading.Thread(target=self._ask, daemon=True) for _ in range(askers)]

    def _post(self, path: str, body: dict):
        import httpx

        try:
            r = self.client.post(self.url + path, json=body, headers={"Authorization": f"Bearer {self.token}"})
        except httpx.TimeoutException:
            with self.lock:
                self.hangs += 1
            return None
        except httpx.HTTPError:  # connection refused or reset while a replica restarts
            with self.lock:
                self.statuses["connection_error"] += 1
            return None
        with self.lock:
            self.statuses[r.status_code] += 1
            if r.status_code in (429, 503) and ("retry-after" not in r.headers or not is_json_error(r)):
                self.refusals_without_retry_after += 1
        return r

    def _write(self) -> None:
        while not self.stop.is_set():
            batch = [record() for _ in range(5)]
            while True:  # the same batch until acknowledged, like OffloadClient.upload_pending
                r = self._post("/v1/records", {"records": batch})
                if r is not None and r.status_code == 200:
                    assert sorted(r.json()["record_ids"]) == sorted(x["record_id"] for x in batch)
                    with self.lock:
                        self.acked.extend(x["record_id"] for x in batch)
                    break
                if self.stop.is_set() and r is not None and r.status_code < 500:
                    break
                time.sleep(0.2)
            time.sleep(0.05)

    def _ask(self) -> None:
        while not self.stop.is_set():
            r = self._post("/v1/answer", {"question": QUESTION, "context": CONTEXT})
            if r is not None and r.status_code == 200:
                with self.lock:
                    self.last_answer_ok_s = time.monotonic()
            elif r is not None:
                time.sleep(0.1)

    def __enter__(self) -> "Devices":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.timeout_s * 3)
        self.client.close()

    def report(self) -> dict:
        return {"acknowledged_records": len(self.acked), "statuses": {str(k): v for k, v in sorted(self.statuses.items(),
                key=lambda kv: str(kv[0]))}, "refusals_without_retry_after": self.refusals_without_retry_after,
                "hangs": self.hangs}


def stored_check(db_url: str, acked: List[str]) -> dict:
    from elma.offload.store import RecordStore

    store = RecordStore(db_url)
    try:
        ids = Counter(r["record_id"] for r in store.all())
    finally:
        store.close()
    return {"stored": sum(ids.values()), "acknowledged_lost": sum(1 for i in acked if ids[i] == 0),
            "acknowledged_duplicated": sum(1 for i in acked if ids[i] > 1), "duplicates_in_store": sum(1 for n in ids.values() if n > 1)}


def stop_server(proc) -> None:
    """End an ``elma-serve`` process as a user would (SIGTERM: it shuts Ray Serve down), killing it after 2 minutes."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_healthy(url: str, token: str, proc, timeout_s: float) -> float:
    import httpx

    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"elma-serve exited ({proc.returncode})")
        try:
            r = httpx.post(url + "/v1/answer", json={"question": QUESTION, "context": CONTEXT},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if r.status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def with_sigterm_restored(run, argv):
    """``run(argv)``, giving the caller's SIGTERM handler back afterwards: the benchmark mains take SIGTERM over to
    stop their servers, and a caller in the same process (pytest) must not keep that handler."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def output_pair(tool: str, out: str, overwrite: bool):
    """``(OUT.json, OUT.md)``, or None after one line on stderr when either is there and ``overwrite`` is false."""
    out_json, out_md = Path(out + ".json"), Path(out + ".md")
    if not overwrite and (out_json.exists() or out_md.exists()):
        print(f"{tool}: error: {out_json} or {out_md} exists (pass --overwrite)", file=sys.stderr)
        return None
    return out_json, out_md


def write_pair(out_json: Path, out_md: Path, payload: dict, lines: List[str]) -> None:
    """Write ``payload`` as OUT.json and ``lines`` as OUT.md, each to a temporary name renamed once both are there."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json, tmp_md = out_json.with_suffix(".json.tmp"), out_md.with_suffix(".md.tmp")
    tmp_json.write_text(json.dumps(payload, indent=2) + "\n")
    tmp_md.write_text("\n".join(lines) + "\n")
    os.replace(tmp_json, out_json)
    os.replace(tmp_md, out_md)


def replica_pids() -> Dict[str, List[int]]:
    import ray

    from elma.offload.ray_engine import replica_pids as pids

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
    return pids()


def shutdown_serve() -> None:
    """On a joined cluster elma-serve deletes only its application; Serve's proxy would keep this run's port."""
    import ray
    from ray import serve

    joined_here = not ray.is_initialized()
    if joined_here:
        ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
    serve.shutdown()
    if joined_here:  # leave the caller's process as it was (a later ray.init there, e.g. the next test, must not fail)
        ray.shutdown()


def kill_run(url: str, token: str, db_url: str, proc, deployment: str, load_s: float, timeout_s: float) -> dict:
    with Devices(url, token, writers=4, askers=4, timeout_s=timeout_s) as devices:
        time.sleep(load_s)
        pid = replica_pids()[deployment][0]
        os.kill(pid, signal.SIGKILL)
        killed_s = time.monotonic()
        time.sleep(load_s)
        recovered_s = wait_healthy(url, token, proc, 180) + (time.monotonic() - killed_s)
        time.sleep(load_s)  # and under load after recovery
    return {"killed": deployment, "pid": pid, "recovered_within_s": round(recovered_s, 1), **devices.report(),
            **stored_check(db_url, devices.acked)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ray-address", help="join this Ray cluster (elma-serve --ray-address) instead of starting one")
    p.add_argument("--model", required=True, help="bundle to serve")
    p.add_argument("--out", help="write the JSON here (default: print it)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--ray-topology", choices=("split", "combined"), default="split",
                   help="combined: one deployment (ingress and model in each replica), so one kill run, of a replica")
    p.add_argument("--overload-clients", type=int, default=64)
    p.add_argument("--max-queued-requests", type=int, default=8)
    p.add_argument("--load-s", type=float, default=5.0, help="seconds of load before and after each fault")
    p.add_argument("--timeout-s", type=float, default=60.0, help="a client waiting longer counts as a hang")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    import httpx
    from pg_cluster import PgCluster

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups below (servers, PostgreSQL)

    from elma.offload.server import free_port, hash_token, new_token

    token = new_token()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    result: dict = {"model": args.model, "replicas": args.replicas, "topology": args.ray_topology}
    pg = PgCluster()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.txt"
        tokens.write_text(f"fault-device {hash_token(token)}\n")
        cmd = [sys.executable, "-m", "elma.serve_cli", "--engine", "ray", "--model", args.model, "--tokens", str(tokens),
               "--db", pg.url, "--port", str(port), "--replicas", str(args.replicas), "--max-queued-requests",
               str(args.max_queued_requests), "--rate-per-s", "1000000", "--burst", "1000000", "--ray-topology",
               args.ray_topology]
        cmd += ["--ray-address", args.ray_address] if args.ray_address else []
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                stderr=open(Path(tmp) / "serve.log", "w"))
        try:
            result["start_s"] = round(wait_healthy(url, token, proc, 600), 1)
            # 1. overload
            with Devices(url, token, writers=0, askers=args.overload_clients, timeout_s=args.timeout_s) as devices:
                time.sleep(args.load_s * 2)
            result["overload"] = devices.report()
            print("overload:", json.dumps(result["overload"]), file=sys.stderr)
            # 2. kill -9: split: a model replica, then the ingress replica; combined: one of the server replicas
            kills = ({"kill_model_replica": "ElmaModel", "kill_ingress_replica": "ElmaIngress"}
                     if args.ray_topology == "split" else {"kill_server_replica": "ElmaServer"})
            for key, deployment in kills.items():
                result[key] = kill_run(url, token, pg.url, proc, deployment, args.load_s, args.timeout_s)
                print(f"{key}:", json.dumps(result[key]), file=sys.stderr)
            # 3. PostgreSQL restarted like a crash under load
            with Devices(url, token, writers=4, askers=2, timeout_s=args.timeout_s) as devices:
                time.sleep(args.load_s)
                before = len(devices.acked)
                pg.restart(mode="immediate")
                time.sleep(args.load_s * 2)
            result["postgres_restart"] = {"acknowledged_before_restart": before, **devices.report(),
                                          **stored_check(pg.url, devices.acked)}
            result["health_after"] = httpx.get(url + "/v1/health", timeout=30).json()
        finally:
            stop_server(proc)
            pg.stop()
            if args.ray_address:
                shutdown_serve()
    faults = [result[k] for k in (*kills, "postgres_restart")]
    # Refusals count against "ok" in the overload run; while the ingress replica is being replaced, Ray's proxy answers
    # with its own 5xx (reported in statuses): the device retries those as any 5xx.
    result["ok"] = (all(f["acknowledged_lost"] == 0 and f["acknowledged_duplicated"] == 0 and f["hangs"] == 0 for f in faults)
                    and result["overload"]["hangs"] == 0 and result["overload"]["refusals_without_retry_after"] == 0)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
