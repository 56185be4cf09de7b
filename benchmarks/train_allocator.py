"""Training throughput under each memory allocator, side by side: glibc as is, glibc with a low mmap threshold
(what the long-run script set to keep RSS down), jemalloc and tcmalloc (LD_PRELOAD).

An allocator is chosen per process, so configurations cannot share a process: each round runs one short
training (``train_throughput.py --modes 3``: length-grouped batches, bf16) per allocator, in a new order every
round, so that a drift of the machine hits all alike. Reported per allocator: real tokens per second (median and
range over rounds), its ratio to the first (plain glibc), the share of CPU time spent in the kernel (page faults of fresh
mappings show up there) and peak RSS.

    python benchmarks/train_allocator.py --model MODEL --data TRAIN.json --rounds 3 --steps 6 --out R.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LIB = "/usr/lib/x86_64-linux-gnu"
ALLOCATORS = {  # name -> extra environment
    "glibc": {},
    "glibc-mmap-1MiB": {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"},
    "jemalloc": {"LD_PRELOAD": f"{LIB}/libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": f"{LIB}/libtcmalloc_minimal.so.4"},
}


def run_once(name: str, args, extra) -> dict:
    env = dict(os.environ, **ALLOCATORS[name])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, str(Path(__file__).with_name("train_throughput.py")), "--model", args.model,
                        "--data", args.data, "--examples", str(args.examples), "--steps", str(args.steps),
                        "--threads", str(args.threads), "--modes", "3", "--out", str(out), *extra],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads(out.read_text())
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"real_tokens_per_s": report["rows"][0]["real_tokens_per_s"], "kernel_share": sys_ / (user + sys_),
            "peak_rss_mb": report["peak_rss_mb"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--allocators", default=",".join(ALLOCATORS), help="comma-separated, the first is the baseline")
    p.add_argument("--out")
    args, extra = p.parse_known_args(argv)  # the rest goes to train_throughput.py (e.g. --tokenizer, --batch-size)
    chosen = args.allocators.split(",")
    unknown = [n for n in chosen if n not in ALLOCATORS]
    if unknown:
        sys.exit(f"train_allocator: unknown allocator {unknown[0]!r}; known: {', '.join(ALLOCATORS)}")
    missing = [n for n in chosen if "LD_PRELOAD" in ALLOCATORS[n] and not Path(ALLOCATORS[n]["LD_PRELOAD"]).exists()]
    if missing:
        sys.exit(f"train_allocator: not installed: {', '.join(missing)} (apt-get install libjemalloc2 "
                 "libtcmalloc-minimal4)")
    runs = {n: [] for n in chosen}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = list(chosen)
        rng.shuffle(order)
        for name in order:
            runs[name].append(run_once(name, args, extra))
            print(f"round {r + 1}: {name:28} {runs[name][-1]['real_tokens_per_s']:7.0f} real tok/s", flush=True)
    base = statistics.median(x["real_tokens_per_s"] for x in runs[chosen[0]])
    rows = []
    for name, xs in runs.items():
        tps = [x["real_tokens_per_s"] for x in xs]
        rows.append({"allocator": name, "real_tokens_per_s_median": statistics.median(tps), "min": min(tps),
                     "max": max(tps), "vs_first": statistics.median(tps) / base,
                     "kernel_share": statistics.median(x["kernel_share"] for x in xs),
                     "peak_rss_mb": max(x["peak_rss_mb"] for x in xs), "runs": xs})
    print(f"{'allocator':28} {'real tok/s':>10} {'range':>13} {'vs first':>8} {'kernel':>7} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['allocator']:28} {r['real_tokens_per_s_median']:10.0f} {r['min']:6.0f}-{r['max']:<6.0f} "
              f"{r['vs_first']:7.2f}x {r['kernel_share']:7.1%} {r['peak_rss_mb']:6.0f} MB")
    if args.out:
        from elma.fsutil import write_json

        write_json(Path(args.out), {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
