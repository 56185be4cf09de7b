"""Offload statistics on a SQuAD file: offload rate, F1 of local vs offloaded answers, bytes sent, latency.

    python benchmarks/offload_stats.py --device-model BUNDLE --policy entropy:0.4,0.4 --data dev.json \\
        [--server-model MODEL] [--max-questions 500] [--deadline-ms 300] --json

The device runtime (``--device-model`` with ``--policy``) answers every question; the unsolved ones go through
the offload client to a server started in this process on a loopback port (``--server-model`` at full depth,
default the device model). Reported (a dataclass, ``--json`` for JSON):

- ``offload_rate``: share of questions the device wanted to offload; ``offloaded_rate`` / ``deferred_rate``:
  those answered by the server / past the deadline (the local answer kept).
- ``f1_local_all`` vs ``f1_final_all``: official per-question F1 (0-100, mean) of the local answers and of
  the answers given (server answer where offloaded); ``f1_local_offloaded`` vs ``f1_server_offloaded``: the
  same on the offloaded questions only.
- ``bytes_sent_per_question``: request bodies sent to /v1/answer (JSON, UTF-8) over all questions, and
  ``bytes_sent_per_offload`` per offloaded question.
- ``latency_ms_p50`` / ``_p99``: end to end (local answer plus offload) over all questions; the ``_offloaded``
  pair over offloaded questions. Server and device share this process and its CPU: loopback, not a network.

Bounded: at most ``--max-questions`` (default 200) questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from elma.offload.client import OffloadClient, OffloadConfig, post_json  # noqa: E402
from elma.offload.queue import RecordQueue  # noqa: E402


@dataclass(frozen=True)
class OffloadStats:
    questions: int
    offload_rate: float  # wanted offload / questions
    offloaded_rate: float  # server answered / questions
    deferred_rate: float  # past the deadline / questions
    f1_local_all: float  # mean per-question F1, 0-100
    f1_final_all: float
    f1_local_offloaded: float  # nan when nothing was offloaded
    f1_server_offloaded: float
    bytes_sent_per_question: float  # /v1/answer request bodies
    bytes_sent_per_offload: float
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_p50_offloaded: float
    latency_ms_p99_offloaded: float
    deadline_ms: float
    policy: str


def percentile_ms(sorted_ms: List[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of sorted values; nan when empty."""
    if not sorted_ms:
        return float("nan")
    return sorted_ms[max(1, min(len(sorted_ms), int(-(-q * len(sorted_ms) // 100)))) - 1]


def _mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def collect(device_model: str, policy: str, data: str, server_model: Optional[str] = None, max_questions: int = 200,
            deadline_ms: float = 300.0) -> OffloadStats:
    from elma.data.squad import load_squad
    from elma.metrics.squad_v2 import compute_f1
    from elma.offload.server import BackgroundServer, RecordStore, RuntimeAnswerer, ServeConfig, create_app, hash_token, new_token
    from elma.runtime.engine import Runtime

    if max_questions < 1:
        raise ValueError(f"max_questions must be at least 1 (got {max_questions})")
    examples = load_squad(Path(data))[:max_questions]
    token = new_token()
    sent_bytes: List[int] = []

    def counting_post(url, payload, token_, timeout_s):
        sent_bytes.append(len(json.dumps(payload, ensure_ascii=False).encode("utf-8")))  # what post_json sends
        return post_json(url, payload, token_, timeout_s)

    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(f"sqlite:///{Path(tmp) / 'records.sqlite3'}")
        answerer = RuntimeAnswerer.open(server_model or device_model)
        device = Runtime.open(device_model, policy=policy)
        queue = RecordQueue(Path(tmp) / "device.sqlite3")
        try:
            app = create_app(ServeConfig(rate_per_s=1e9, burst=10**9), answerer, store, {hash_token(token): "bench"})
            with BackgroundServer(app) as srv:
                client = OffloadClient(OffloadConfig(srv.url, token=token, deadline_ms=deadline_ms), queue, post=counting_post)
                results = [client.ask(device, ex.question, ex.context) for ex in examples]
        finally:
            queue.close()
            device.close()
            answerer.close()
            store.close()

    def f1(ex, text: str) -> float:
        golds = ex.answer_texts or [""]
        return 100.0 * max(compute_f1(g, text) for g in golds)

    n = len(results)
    offloaded = [(ex, r) for ex, r in zip(examples, results) if r.offloaded]
    latencies = sorted(r.latency_ms for r in results)
    off_latencies = sorted(r.latency_ms for _, r in offloaded)
    return OffloadStats(
        n, sum(bool(r.reason) for r in results) / n, len(offloaded) / n, sum(r.deferred for r in results) / n,
        _mean([f1(ex, r.local.text) for ex, r in zip(examples, results)]),
        _mean([f1(ex, r.text) for ex, r in zip(examples, results)]),
        _mean([f1(ex, r.local.text) for ex, r in offloaded]), _mean([f1(ex, r.text) for ex, r in offloaded]),
        sum(sent_bytes) / n, sum(sent_bytes) / len(offloaded) if offloaded else float("nan"),
        percentile_ms(latencies, 50), percentile_ms(latencies, 99), percentile_ms(off_latencies, 50),
        percentile_ms(off_latencies, 99), deadline_ms, policy)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device-model", required=True, help="bundle (or model folder) the device runs")
    p.add_argument("--policy", required=True, help="device exit policy, e.g. entropy:0.4,0.4")
    p.add_argument("--data", required=True, help="SQuAD JSON file with gold answers")
    p.add_argument("--server-model", help="model the server runs at full depth (default: the device model)")
    p.add_argument("--max-questions", type=int, default=200)
    p.add_argument("--deadline-ms", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    stats = collect(args.device_model, args.policy, args.data, args.server_model, args.max_questions, args.deadline_ms)
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        for k, v in asdict(stats).items():
            print(f"{k:<28} {v:.3f}" if isinstance(v, float) else f"{k:<28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
