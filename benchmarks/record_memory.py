"""Peak memory of recording every exit: in batches with every exit's logits kept (what ``elma calibrate`` did
before it used the sweep's recorder) against one question at a time reduced on the fly
(``elma.bench.sweep.record_exits``, what ``elma-bench`` and ``elma calibrate`` do).

Each mode runs in its own child process, so that its ``ru_maxrss`` is its own. Prints one JSON object per mode:
peak resident memory (MiB) after loading and at the end, the questions, and the bytes the sweep's record keeps.
On MiniLM-L6 (13 ONNX Runtime sessions) batches of 32 dev questions held 8.7 GB after 96 questions (each
session's arena grows to the largest batch and keeps it); one at a time 0.44 GB.

    python benchmarks/record_memory.py BUNDLE --data dev.json --limit 96 [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("batched", "streamed")


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, bundle: str, data: str, limit: int, batch: int) -> dict:
    """Record ``limit`` questions in ``mode`` in this process; what it cost."""
    from elma.bench import sweep
    from elma.data.squad import load_squad
    from elma.runtime.engine import Runtime

    examples = load_squad(Path(data))[:limit]
    with Runtime.open(bundle) as rt:
        loaded = _peak_mib()
        t0 = time.perf_counter()
        kept = 0
        if mode == "batched":
            held = [logits for lo in range(0, len(examples), batch)  # every exit's logits, all kept
                    for windows in rt.record_exits([(e.question, e.context) for e in examples[lo:lo + batch]])
                    for _, logits in windows]
            kept = sum(logits.nbytes for logits in held)
        else:
            kept = sweep.record_exits(rt, examples).nbytes
        seconds = time.perf_counter() - t0
    return {"mode": mode, "questions": len(examples), "batch": batch if mode == "batched" else 1,
            "peak_rss_loaded_mib": loaded, "peak_rss_end_mib": _peak_mib(), "kept_bytes": kept, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="SQuAD file")
    p.add_argument("--limit", type=int, default=96, help="first N questions (default 96)")
    p.add_argument("--batch", type=int, default=32, help="questions per batch of the batched mode (default 32)")
    p.add_argument("--mode", choices=MODES, help="run one mode in this process (the parent runs each in a child)")
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args.mode, args.bundle, args.data, args.limit, args.batch)))
        return 0
    out = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, args.bundle, "--data", args.data, "--limit", str(args.limit),
                               "--batch", str(args.batch), "--mode", mode], capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
