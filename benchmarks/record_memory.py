"""Peak memory of ``elma-bench``: of recording every exit, and of a whole run with baselines and sweep.

Two measurements, each mode in its own child process so that its peak (``ru_maxrss``) is its own:

* ``record``: recording every exit in batches with every exit's logits kept (``Runtime.record_exits``, what
  ``elma calibrate`` did before it used the sweep's recorder) against one question at a time reduced on the fly
  (``elma.bench.sweep.record_exits``, what ``elma-bench`` and ``elma calibrate`` do). On MiniLM-L6 (13
  ONNX Runtime sessions) batches of 32 dev questions held 8.7 GB after 96 questions (each session's arena
  grows to the largest batch and keeps it); one at a time 0.44 GB.

      python benchmarks/record_memory.py record BUNDLE --data dev.json --limit 96 [--batch 32]

* ``bench``: a whole ``elma-bench`` run (the arguments after ``--``) at each ``--limits`` N, so that what grows
  with the questions shows apart from what is fixed. A thread samples the resident memory (``/proc/self/statm``,
  every 10 ms), and its anonymous part (resident minus file-backed: see ``_resident_mib``), every 2 s the
  proportional set size (``_pss_mib``: a page mapped twice counts once), and every stage ``elma-bench`` logs is
  stamped with the memory then: what each stage adds.

      python benchmarks/record_memory.py bench --limits 100 300 1000 --out benchmarks/results/bench-memory.json \\
          -- B32 --data dev.json --policy SPEC --compare B8 --torch-model MODEL --sweep

* ``lengths``: ONNX Runtime's allocator set-up against window lengths that change per question: the bundle's
  fused graph runs one window at each length from 160 to the longest (step 4), then two longest windows, twice
  over, under each setting in a child of its own: the memory pattern (``OrtOptions.mem_pattern``) on and off, the
  shared arena growing as requested instead of by powers of two (``OrtOptions.arena_extend``), and an arena per
  session (``shared_arena`` off). Memory that still grows in the second pass over the same lengths would grow on
  and on over a long run; with the pattern on it did (167 -> 207 -> 228 MiB on the fp32 MiniLM-L6 bundle), off it
  stopped (167 -> 207 -> 207 MiB).

      python benchmarks/record_memory.py lengths BUNDLE --out benchmarks/results/ort-arena.json

Prints (and with ``--out`` writes) one JSON object. Resident memory is what the kernel counts (ONNX Runtime's
and PyTorch's allocations included, which ``tracemalloc`` does not see). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

MODES = ("batched", "streamed")
SAMPLE_S = 0.01  # resident memory sampling period of the bench mode
TIMELINE_S = 2.0  # period of the (seconds, resident, anonymous, proportional MiB) timeline the bench mode keeps


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    """Resident memory of this process now (MiB)."""
    return _resident_mib()[0]


def _resident_mib() -> tuple:
    """(resident, of it file-backed) memory of this process now, MiB (``/proc/self/statm``: resident, shared).

    File-backed pages (shared libraries, and the bundles' weight files, which ONNX Runtime maps) are clean: the
    kernel can drop them and read them again, and a page mapped by two sessions counts twice in the resident
    figure. The rest (anonymous: heaps, arenas, tensors) is what the process holds for good.
    """
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(fields[1]) * page, int(fields[2]) * page


def _pss_mib() -> Optional[float]:
    """Proportional set size of this process now, MiB (``/proc/self/smaps_rollup``, Linux 4.14+; None without it).

    Resident memory counts a page once per mapping: ONNX Runtime maps a bundle's ``weights.bin`` for the per-layer
    sessions and again for the fused graph, so its pages count twice there. The proportional figure counts each
    physical page once, shared with other processes mapping it in proportion: the memory this process costs.
    Reading it walks every mapping (milliseconds), so the bench mode samples it every ``TIMELINE_S`` only.
    """
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _round(mib: Optional[float]) -> Optional[float]:
    return None if mib is None else round(mib, 1)


# ---- record: batched against streamed --------------------------------------------------------------------------


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


def record_main(args) -> int:
    if args.mode:
        print(json.dumps(measure(args.mode, args.bundle, args.data, args.limit, args.batch)))
        return 0
    out = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "record", args.bundle, "--data", args.data, "--limit",
                               str(args.limit), "--batch", str(args.batch), "--mode", mode],
                              capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    _emit(out, args.out)
    return 0


# ---- lengths: the memory pattern against changing window lengths ----------------------------------------------


# name -> OrtOptions fields of each setting the lengths mode compares (the first two: the memory pattern)
LENGTH_SETTINGS = {"mem_pattern on": {"mem_pattern": True}, "mem_pattern off": {},
                   "arena same_as_requested": {"arena_extend": "same_as_requested"},
                   "arena per session": {"shared_arena": False}}


def lengths_child(bundle: str, setting: str, passes: int, step: int, shortest: int = 160) -> dict:
    import numpy as np

    from elma.runtime.backends import OrtOptions
    from elma.runtime.engine import Runtime

    options = OrtOptions(**LENGTH_SETTINGS[setting])
    with Runtime.open(bundle, policy="none", options=options) as rt:
        longest = rt.info.windows.max_seq_length
        shapes = [(1, t) for t in range(min(shortest, longest), longest + 1, step)] + [(2, longest)]

        def run(batch: int, width: int) -> None:
            ids = np.full((batch, width), 1000, dtype=np.int32)  # any token: memory depends on the shape only
            rt.backend.run_fused(ids, np.ones_like(ids), np.zeros_like(ids))

        run(*shapes[0])
        out = {"setting": setting, "mem_pattern": options.mem_pattern, "arena_extend": options.arena_extend,
               "shared_arena": options.shared_arena, "shapes": len(shapes),
               "rss_after_first_run_mib": round(_rss_mib(), 1)}
        for p in range(passes):
            for shape in shapes:
                run(*shape)
            out[f"rss_after_pass_{p + 1}_mib"] = round(_rss_mib(), 1)
    return out


def lengths_main(args) -> int:
    if args.setting is not None:
        print(json.dumps(lengths_child(args.bundle, args.setting, args.passes, args.step, args.shortest)))
        return 0
    runs = []
    for setting in LENGTH_SETTINGS:
        proc = subprocess.run([sys.executable, __file__, "lengths", args.bundle, "--passes", str(args.passes), "--step",
                               str(args.step), "--shortest", str(args.shortest), "--setting", setting],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    _emit({"machine": platform.platform(), "python": platform.python_version(), "bundle": args.bundle, "runs": runs},
          args.out)
    return 0


# ---- bench: a whole elma-bench run ------------------------------------------------------------------------------


class RssSampler:
    """Samples this process's resident memory in a daemon thread; ``mark(name)`` stamps a stage."""

    def __init__(self, period_s: float = SAMPLE_S):
        self.period_s = period_s
        self.peak_mib, self.file_at_peak_mib = _resident_mib()  # the resident peak, and its file-backed part
        self.peak_anon_mib = self.peak_mib - self.file_at_peak_mib  # highest anonymous memory seen
        self.peak_pss_mib = _pss_mib()  # highest proportional set size sampled (None where the kernel has none)
        self.stages: List[dict] = []
        self.timeline: List[tuple] = []  # (seconds, resident, anonymous, proportional MiB) every TIMELINE_S
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        next_s = 0.0
        while not self._stop.wait(self.period_s):
            now, anon = self._sample()
            t = time.perf_counter() - self._t0
            if t >= next_s:
                pss = self._sample_pss()
                self.timeline.append((round(t, 1), round(now, 1), round(anon, 1), _round(pss)))
                next_s = t + TIMELINE_S

    def _sample(self) -> tuple:
        """(resident, anonymous) now, MiB; the peaks updated."""
        now, file_backed = _resident_mib()
        if now > self.peak_mib:
            self.peak_mib, self.file_at_peak_mib = now, file_backed
        self.peak_anon_mib = max(self.peak_anon_mib, now - file_backed)
        return now, now - file_backed

    def _sample_pss(self) -> Optional[float]:
        pss = _pss_mib()
        if pss is not None:
            self.peak_pss_mib = max(self.peak_pss_mib or 0.0, pss)
        return pss

    def mark(self, name: str) -> None:
        """A stage begins: the memory now and the highest so far (the previous stages' peak)."""
        now, anon = self._sample()
        pss = self._sample_pss()
        self.stages.append({"stage": name, "at_s": round(time.perf_counter() - self._t0, 2),
                            "rss_mib": round(now, 1), "anon_mib": round(anon, 1), "pss_mib": _round(pss),
                            "peak_so_far_mib": round(self.peak_mib, 1)})

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mark("end")


class _StageHandler(logging.Handler):
    """Stamps every INFO line of the elma-bench logger (one per stage) on the sampler."""

    def __init__(self, sampler: RssSampler):
        super().__init__(logging.INFO)
        self.sampler = sampler

    def emit(self, record: logging.LogRecord) -> None:
        self.sampler.mark(record.getMessage()[:120])


def bench_child(bench_args: List[str]) -> dict:
    """One elma-bench run in this process, its memory sampled; the report's own figures added."""
    sampler = RssSampler()
    sampler.mark("start")
    logging.getLogger("elma-bench").addHandler(_StageHandler(sampler))
    from elma.bench.cli import main as bench_main

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, sampler:
        rc = bench_main([*bench_args, "--no-progress", "--report-dir", str(Path(tmp) / "report")])
        report = json.loads((Path(tmp) / "report" / "report.json").read_text()) if rc == 0 else {}
    return {"exit_status": rc, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(_peak_mib(), 1), "sampled_peak_rss_mib": round(sampler.peak_mib, 1),
            "file_backed_at_sampled_peak_mib": round(sampler.file_at_peak_mib, 1),
            "sampled_peak_anon_mib": round(sampler.peak_anon_mib, 1),
            "sampled_peak_pss_mib": _round(sampler.peak_pss_mib),
            "questions": report.get("questions"), "windows": report.get("windows"),
            "sweep_record_bytes": report.get("sweep_record_bytes"), "report_peak_rss_mb": report.get("peak_rss_end_mb"),
            "stages": sampler.stages, "timeline": sampler.timeline}


def bench_main_(args) -> int:
    if args.child:
        print(json.dumps(bench_child(args.bench_args)))
        return 0
    runs = []
    for n in args.limits or [None]:
        argv = [*args.bench_args, *(["--limit", str(n)] if n else [])]
        proc = subprocess.run(["nice", "-n", str(args.nice), sys.executable, __file__, "bench", "--child", "--", *argv],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["command"] = "elma-bench " + " ".join(argv)
        runs.append(run)
        pss = run["sampled_peak_pss_mib"]
        print(f"limit {n or 'all'}: peak {run['peak_rss_mib']:.0f} MiB resident ({run['file_backed_at_sampled_peak_mib']:.0f} "
              f"of it file-backed), anonymous peak {run['sampled_peak_anon_mib']:.0f} MiB, proportional peak "
              f"{'n/a' if pss is None else f'{pss:.0f} MiB'}, {run['seconds']:.0f} s", file=sys.stderr)
    _emit({"machine": platform.platform(), "python": platform.python_version(), "runs": runs}, args.out)
    return 0


def _emit(obj: dict, out: Optional[str]) -> None:
    text = json.dumps(obj, indent=2)
    print(text)
    if out:
        from elma.fsutil import atomic_write

        atomic_write(Path(out), lambda tmp: Path(tmp).write_text(text + "\n"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record", help="batched against streamed recording of every exit")
    r.add_argument("bundle")
    r.add_argument("--data", required=True, help="SQuAD file")
    r.add_argument("--limit", type=int, default=96, help="first N questions (default 96)")
    r.add_argument("--batch", type=int, default=32, help="questions per batch of the batched mode (default 32)")
    r.add_argument("--mode", choices=MODES, help="run one mode in this process (the parent runs each in a child)")
    r.add_argument("--out", help="also write the JSON here")
    g = sub.add_parser("lengths", help="ONNX Runtime's allocator settings, window lengths changing per run")
    g.add_argument("bundle")
    g.add_argument("--passes", type=int, default=2, help="passes over the lengths (default 2)")
    g.add_argument("--step", type=int, default=4, help="tokens between the lengths run (default 4)")
    g.add_argument("--shortest", type=int, default=160, help="first length run (default 160; at most the longest)")
    g.add_argument("--setting", choices=tuple(LENGTH_SETTINGS), help="run one setting in this process")
    g.add_argument("--out", help="also write the JSON here")
    b = sub.add_parser("bench", help="a whole elma-bench run (arguments after --) at each --limits N")
    b.add_argument("--limits", type=int, nargs="+", help="question counts, one run each (default: the whole file)")
    b.add_argument("--nice", type=int, default=0, help="niceness of the runs (memory does not depend on it)")
    b.add_argument("--out", help="also write the JSON here")
    b.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then elma-bench's arguments")
    args = p.parse_args(argv)
    if args.what == "record":
        return record_main(args)
    if args.what == "lengths":
        return lengths_main(args)
    if args.bench_args and args.bench_args[0] == "--":
        args.bench_args = args.bench_args[1:]
    if not args.bench_args:
        p.error("bench: give elma-bench's arguments after --")
    return bench_main_(args)


if __name__ == "__main__":
    sys.exit(main())
