"""Offload server throughput, one table: uvicorn against Ray Serve (1 and 2 replicas, batching off and on), in both
topologies (split: ingress -> model deployment; combined: the model inside the ingress replicas).

    python benchmarks/offload_matrix.py --model BUNDLE --out benchmarks/results/offload_matrix
        # -> offload_matrix.json and offload_matrix.md: requests/s, p50, p99 at concurrency 1, 8, 32, 64
    python benchmarks/offload_matrix.py ... --only uvicorn "ray combined"     # a subset: names containing these

Each configuration is a fresh ``elma-serve`` process on a free loopback port (Ray started by it; records in a
throwaway PostgreSQL, since 2 replicas refuse SQLite), warmed up, then loaded by ``offload_load.run_load`` (threads,
one connection per request, as a device sends) at each concurrency in turn. Ray replicas get
``--intra-op-threads cores/replicas`` so that they do not fight over the cores; uvicorn keeps ONNX Runtime's default.
A quiet machine is needed for figures: run it with nothing else busy. ``--smoke`` runs two configurations briefly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks", ROOT / "tests" / "offload"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from offload_faults import output_pair, shutdown_serve, stop_server, wait_healthy, with_sigterm_restored, write_pair  # noqa: E402
from offload_load import run_load  # noqa: E402


@dataclass(frozen=True)
class Engine:
    name: str
    flags: List[str]


def engines(cores: int) -> List[Engine]:
    """uvicorn, then each Ray topology with 1 and 2 replicas, batching off and on. The split rows keep the names of
    the earlier tables ("ray 2 replicas, batching on"); the combined ones say so ("ray combined 2 replicas, ...")."""
    def ray(topology: str, replicas: int, batching: bool) -> Engine:
        flags = ["--engine", "ray", "--ray-topology", topology, "--replicas", str(replicas),
                 "--intra-op-threads", str(max(1, cores // replicas)), "--max-ongoing-requests", "32",
                 "--max-queued-requests", "256"]
        name = (f"ray{' combined' if topology == 'combined' else ''} {replicas} replica{'s' if replicas > 1 else ''}, "
                f"batching {'on' if batching else 'off'}")
        return Engine(name, flags + ([] if batching else ["--no-batching"]))

    return [Engine("uvicorn", ["--engine", "uvicorn"])] + [ray(t, r, b) for t in ("split", "combined") for r in (1, 2)
                                                           for b in (False, True)]


def main(argv: Optional[List[str]] = None) -> int:
    return with_sigterm_restored(_main, argv)  # _main takes SIGTERM over to clean up; a caller (pytest) gets it back


def _main(argv: Optional[List[str]]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ray-address", help="join this Ray cluster (elma-serve --ray-address) instead of starting one")
    p.add_argument("--model", required=True, help="bundle to serve (e.g. `elma export MODEL -o /tmp/B32`)")
    p.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    p.add_argument("--max-duration-s", type=float, default=60.0, help="per concurrency level")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only the configurations whose name contains one of "
                   "these (e.g. uvicorn 'ray combined')")
    p.add_argument("--smoke", action="store_true", help="uvicorn and each topology with 1 replica, batching on")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    outputs = output_pair("offload_matrix", args.out, args.overwrite)
    if outputs is None:
        return 2
    out_json, out_md = outputs
    cores = os.cpu_count() or 1
    chosen = engines(cores)
    if args.smoke:
        chosen = [e for e in chosen if e.name in ("uvicorn", "ray 1 replica, batching on", "ray combined 1 replica, batching on")]
    if args.only:
        chosen = [e for e in chosen if any(part in e.name for part in args.only)]
        if not chosen:
            print(f"offload_matrix: error: --only {' '.join(args.only)} matches no configuration", file=sys.stderr)
            return 2
    from pg_cluster import PgCluster

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups below (servers, PostgreSQL)
    from elma.offload.server import free_port, hash_token, new_token

    token = new_token()
    rows = []
    pg = PgCluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tokens = Path(tmp) / "tokens.txt"
            tokens.write_text(f"load-test {hash_token(token)}\n")
            port = free_port()  # one port for all: on a joined cluster Serve's proxy keeps the port it started with
            for engine in chosen:
                cmd = [sys.executable, "-m", "elma.serve_cli", "--model", args.model, "--tokens", str(tokens), "--db",
                       pg.url, "--port", str(port), "--rate-per-s", "1000000", "--burst", "1000000", *engine.flags]
                if args.ray_address and "ray" in engine.flags:
                    cmd += ["--ray-address", args.ray_address]
                proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                        stderr=open(Path(tmp) / "serve.log", "a"))
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_healthy(url, token, proc, 600)
                    run_load(url, token, 20, 4, 60)  # warm-up: sessions, batch paths, connection pools
                    for c in args.concurrency:
                        r = run_load(url, token, args.requests, c, args.max_duration_s)
                        rows.append({"engine": engine.name, **asdict(r)})
                        print(f"{engine.name:32s} c={c:3d} {r.requests_per_s:7.1f} req/s p50 {r.p50_ms:7.1f} ms "
                              f"p99 {r.p99_ms:7.1f} ms errors {r.errors or 'none'}", file=sys.stderr)
                finally:
                    stop_server(proc)
                    if args.ray_address and "ray" in engine.flags:
                        shutdown_serve()
    finally:
        pg.stop()
    meta = {"model": args.model, "cores": cores, "requests_per_level": args.requests, "smoke": args.smoke, "only": args.only}
    lines = [f"Offload server on loopback, {args.model}, {cores} cores, {args.requests} requests per level"
             f"{' (smoke run: not figures)' if args.smoke else ''}.", "",
             "| engine | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {sum(r['errors'].values())} |")
    write_pair(out_json, out_md, {**meta, "rows": rows}, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
