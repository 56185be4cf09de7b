"""Load test of the offload server's POST /v1/answer on loopback: requests per second and latency percentiles.

    # against a running server (elma-serve ... --host 127.0.0.1):
    python benchmarks/offload_load.py --url http://127.0.0.1:8000 --token-file device.token --requests 500 --concurrency 8
    # or start one in this process on a free loopback port with MODEL at full depth:
    python benchmarks/offload_load.py --model BUNDLE --requests 500 --concurrency 8 --json

Bounded on purpose: at most ``--requests`` requests (<= 100000) and ``--max-duration-s`` seconds, loopback URLs
only. Clients are threads using the device client's ``post_json`` (urllib, one connection per request, as a
device sends). With ``--model`` the server shares this process (and its GIL) with the clients, so a separate
``elma-serve`` gives the figures to report; the output says which was measured. The server's rate limit is
per device: give the load-test device a large ``--rate-per-s`` / ``--burst`` in ``elma-serve``, or count
the 429s in ``errors``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from elma.errors import OffloadError  # noqa: E402
from elma.offload.client import API_ANSWER, post_json, read_token_file  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_REQUESTS = 100_000
QUESTION = "Who was the leader of the Norse raiders?"
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
           "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")


@dataclass(frozen=True)
class LoadResult:
    """One load-test run."""

    url: str
    server: str  # "in-process" or "external"
    requests: int  # sent
    ok: int  # HTTP 200
    errors: Dict[str, int]  # error message prefix -> count
    concurrency: int
    wall_s: float
    requests_per_s: float  # ok / wall_s
    p50_ms: float  # of successful requests, nearest rank
    p99_ms: float
    max_ms: float


def percentile_ms(sorted_ms: List[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of sorted values; nan when empty."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, min(len(sorted_ms), int(-(-q * len(sorted_ms) // 100))))
    return sorted_ms[rank - 1]


def run_load(url: str, token: str, requests: int, concurrency: int, max_duration_s: float, server: str = "external",
             timeout_s: float = 10.0) -> LoadResult:
    """Send ``requests`` answer requests from ``concurrency`` threads, stopping early after ``max_duration_s``."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load test runs on loopback only (got host {host!r})")
    if not 1 <= requests <= MAX_REQUESTS or not 1 <= concurrency <= 256 or max_duration_s <= 0:
        raise ValueError(f"requests must be in 1..{MAX_REQUESTS}, concurrency in 1..256, max_duration_s > 0 "
                         f"(got {requests}, {concurrency}, {max_duration_s})")
    lock = threading.Lock()
    latencies_ms: List[float] = []
    errors: Counter = Counter()
    sent = [0]
    began_s = time.perf_counter()
    stop_s = began_s + max_duration_s

    def worker() -> None:
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() > stop_s:
                    return
                sent[0] += 1
            t0 = time.perf_counter()
            try:
                post_json(url.rstrip("/") + API_ANSWER, {"question": QUESTION, "context": CONTEXT}, token, timeout_s)
            except OffloadError as err:
                with lock:
                    errors[str(err).split(": ", 1)[-1][:60]] += 1
                continue
            with lock:
                latencies_ms.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - began_s
    latencies_ms.sort()
    return LoadResult(url, server, sent[0], len(latencies_ms), dict(errors), concurrency, wall_s, len(latencies_ms) / wall_s,
                      percentile_ms(latencies_ms, 50), percentile_ms(latencies_ms, 99),
                      latencies_ms[-1] if latencies_ms else float("nan"))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on loopback (needs --token-file)")
    where.add_argument("--model", help="start a server in this process with this bundle or model folder")
    p.add_argument("--token-file", help="device token for --url")
    p.add_argument("--backend", help="runtime backend for --model")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-duration-s", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.url:
        if not args.token_file:
            p.error("--url needs --token-file")
        result = run_load(args.url, read_token_file(args.token_file), args.requests, args.concurrency, args.max_duration_s)
    else:
        from elma.offload.server import (
            BackgroundServer,
            RecordStore,
            RuntimeAnswerer,
            ServeConfig,
            create_app,
            hash_token,
            new_token,
        )

        token = new_token()
        with tempfile.TemporaryDirectory() as tmp:
            store = RecordStore(f"sqlite:///{Path(tmp) / 'records.sqlite3'}")
            answerer = RuntimeAnswerer.open(args.model, args.backend)
            config = ServeConfig(rate_per_s=1e9, burst=10**9)  # measure the answer path, not the limiter
            try:
                with BackgroundServer(create_app(config, answerer, store, {hash_token(token): "load-test"})) as srv:
                    result = run_load(srv.url, token, args.requests, args.concurrency, args.max_duration_s, "in-process")
            finally:
                answerer.close()
                store.close()
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.ok}/{result.requests} ok in {result.wall_s:.2f} s with {result.concurrency} clients ({result.server} "
              f"server): {result.requests_per_s:.1f} requests/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
              f"max {result.max_ms:.1f} ms; errors {result.errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
