"""Where one offloaded question's time goes: Serve's proxy, the ingress app, the hop to the model, ``Runtime.ask_batch``.

    python benchmarks/offload_profile.py --model BUNDLE --out benchmarks/results/offload_profile
        # -> offload_profile.json and .md: median and p90 ms per stage, uvicorn and each Ray topology

Each server is a fresh ``elma-serve`` (``--server-timing`` for Ray) on a free loopback port, warmed up, then sent
``--requests`` questions one after another (concurrency 1, a new connection each, as a device does). A Ray reply
carries ``Server-Timing: app;dur=A, model;dur=M`` (measured inside the ingress replica) and the reply's ``latency_ms``
(R: the runtime's ``ask_batch``, measured in the model's replica); the client measures the total T. Each duration is
measured within one process, so no clocks are compared across processes. Stages:

    proxy    T - A   client <-> Serve's HTTP proxy <-> ingress replica (HTTP parsing, the proxy's routing, 2 hops)
    app      A - M   the FastAPI app in the ingress: token, rate limit, body, JSON, validation, the reply's JSON
    model    M - R   split: the handle call to a model replica and back, its queue and batch wait;
                     combined: the batch wait and the hand-off to the worker thread (no process hop)
    runtime  R       Runtime.ask_batch (tokenizer, every layer, span decoding)

uvicorn has no Server-Timing: its rows are ``runtime`` and ``other`` (T - R: HTTP, the app, the thread hand-off).
Figures need a quiet machine; ``--smoke`` checks the plumbing with a few requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks", ROOT / "tests" / "offload"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from offload_faults import CONTEXT, QUESTION, output_pair, shutdown_serve, stop_server, wait_healthy, with_sigterm_restored, write_pair  # noqa: E402

STAGES = {"ray": ("proxy", "app", "model", "runtime"), "uvicorn": ("other", "runtime")}


def stages_ms(total_ms: float, server_timing: Optional[str], runtime_ms: float) -> Dict[str, float]:
    """One request's stages (see the module docstring) from the client's total, the Server-Timing header and the
    reply's ``latency_ms``."""
    from elma.offload.timing import parse_server_timing

    if server_timing is None:
        return {"total": total_ms, "other": total_ms - runtime_ms, "runtime": runtime_ms}
    timing = parse_server_timing(server_timing)
    app_ms, model_ms = timing["app"], timing["model"]
    return {"total": total_ms, "proxy": total_ms - app_ms, "app": app_ms - model_ms, "model": model_ms - runtime_ms,
            "runtime": runtime_ms}


def profile(url: str, token: str, requests: int) -> List[Dict[str, float]]:
    """``requests`` questions one after another, each on a new connection as the device's offload client and the
    load generator send them (urllib), from one ``httpx.Client`` made before the clock starts (``httpx.post`` makes
    a client per call, and with it an SSL context: about 35 ms that the first version of this profile counted as
    the server's); the stages of each."""
    import httpx

    rows = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(requests):
            began_s = time.perf_counter()
            reply = client.post(url + "/v1/answer", json={"question": QUESTION, "context": CONTEXT})
            total_ms = (time.perf_counter() - began_s) * 1000.0
            reply.raise_for_status()
            rows.append(stages_ms(total_ms, reply.headers.get("server-timing"), reply.json()["latency_ms"]))
    return rows


def summarize(server: str, rows: List[Dict[str, float]]) -> List[dict]:
    """Median and p90 per stage, and the stage's share of the median total."""
    total_median = statistics.median(r["total"] for r in rows)
    out = []
    for stage in (*STAGES["ray" if "proxy" in rows[0] else "uvicorn"], "total"):
        values = sorted(r[stage] for r in rows)
        median = statistics.median(values)
        out.append({"server": server, "stage": stage, "median_ms": median,
                    "p90_ms": values[min(len(values) - 1, int(0.9 * len(values)))],
                    "share_of_total": median / total_median if total_median > 0 else float("nan")})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return with_sigterm_restored(_main, argv)  # _main takes SIGTERM over to clean up; a caller (pytest) gets it back


def _main(argv: Optional[List[str]]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="bundle to serve")
    p.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    p.add_argument("--servers", nargs="+", choices=("uvicorn", "split", "combined"),
                   default=["uvicorn", "split", "combined"])
    p.add_argument("--requests", type=int, default=200, help="questions per server, one at a time")
    p.add_argument("--no-batching", action="store_true", help="Ray without @serve.batch (no batch wait)")
    p.add_argument("--ray-address", help="join this Ray cluster (elma-serve --ray-address) instead of starting one")
    p.add_argument("--smoke", action="store_true", help="a few requests: the plumbing, not figures")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    outputs = output_pair("offload_profile", args.out, args.overwrite)
    if outputs is None:
        return 2
    out_json, out_md = outputs
    if args.requests < 1:
        print(f"offload_profile: error: --requests must be >= 1 (got {args.requests})", file=sys.stderr)
        return 2
    requests = min(args.requests, 5) if args.smoke else args.requests
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups below (the server)
    from elma.offload.server import free_port, hash_token, new_token

    token = new_token()
    summary: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.txt"
        tokens.write_text(f"profile {hash_token(token)}\n")
        port = free_port()  # one port for all: on a joined cluster Serve's proxy keeps the port it started with
        for server in args.servers:
            # One replica, all cores to it: a single question is profiled, so SQLite is store enough.
            cmd = [sys.executable, "-m", "elma.serve_cli", "--model", args.model, "--tokens", str(tokens), "--db",
                   f"sqlite:///{Path(tmp) / (server + '.sqlite3')}", "--port", str(port), "--rate-per-s", "1000000",
                   "--burst", "1000000"]
            ray = server != "uvicorn"
            if ray:
                cmd += ["--engine", "ray", "--ray-topology", server, "--server-timing", "--intra-op-threads",
                        str(os.cpu_count() or 1)] + (["--no-batching"] if args.no_batching else [])
                cmd += ["--ray-address", args.ray_address] if args.ray_address else []
            proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                    stderr=open(Path(tmp) / "serve.log", "a"))
            url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(url, token, proc, 600)
                profile(url, token, 5)  # warm-up: sessions, the batch path, connection pools
                rows = profile(url, token, requests)
            except Exception:
                print((Path(tmp) / "serve.log").read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                stop_server(proc)
                if args.ray_address and ray:
                    shutdown_serve()
            added = summarize(f"ray {server}" if ray else server, rows)
            summary += added
            for r in added:
                print(f"{r['server']:14s} {r['stage']:8s} median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
                      f"{100 * r['share_of_total']:5.1f}%", file=sys.stderr)
    meta = {"model": args.model, "cores": os.cpu_count(), "requests": requests, "batching": not args.no_batching,
            "smoke": args.smoke}
    lines = [f"One question at a time on loopback, {args.model}, {os.cpu_count()} cores, {requests} requests per server, "
             f"Ray batching {'off' if args.no_batching else 'on'}{' (smoke run: not figures)' if args.smoke else ''}.",
             "", "| server | stage | median ms | p90 ms | share of median total |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['server']} | {r['stage']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {100 * r['share_of_total']:.0f}% |"
              for r in summary]
    write_pair(out_json, out_md, {**meta, "stages": summary}, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
