"""Latency of one ONNX Runtime session option against its opposite, interleaved question by question.

    python benchmarks/ort_options_latency.py BUNDLE --data dev.json --option mem_pattern --limit 300 \\
        [--policy none] [--out benchmarks/results/ort-mem-pattern-latency.json [--overwrite]]

Opens the bundle twice in one process, once with ``OrtOptions(<option>=False)`` and once with ``True`` (every
other setting at its default), warms both up, then times ``Runtime.ask`` on every question with each, in
alternating order (question i: off then on for even i, on then off for odd i), so that machine noise and cache
effects hit both alike. Prints (and with ``--out`` writes) the mean latency of each, the speed-up of "on" over "off"
with a paired bootstrap 95% interval (``elma.bench.bootstrap.ratio_ci``), and how many answers differ. Speed is
measured here, never in unit tests; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

BOOL_OPTIONS = ("mem_pattern", "shared_arena", "allow_spinning")


def time_pair(runtimes, questions, policy: str):
    """Per question latency (ms) of each runtime, in alternating order, and the answers of each."""
    ms = {k: [] for k in runtimes}
    answers = {k: [] for k in runtimes}
    names = list(runtimes)
    for i, (question, context) in enumerate(questions):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            answer = runtimes[name].ask(question, context, policy=policy)
            ms[name].append((time.perf_counter() - t0) * 1e3)
            answers[name].append(answer.text)
    return ms, answers


def main(argv=None) -> int:
    from elma.bench.bootstrap import ratio_ci
    from elma.data.squad import load_squad
    from elma.errors import ElmaError
    from elma.fsutil import Output, check_outputs, write_json
    from elma.runtime.backends import OrtOptions
    from elma.runtime.engine import Runtime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="SQuAD JSON (questions and contexts; answers not needed)")
    p.add_argument("--option", choices=BOOL_OPTIONS, default="mem_pattern")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--policy", default="none", help="exit policy both run (default none: full depth)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    try:  # before any timing: a taken --out is refused, not found out after minutes of work
        check_outputs([Output(args.out, "--out")], args.overwrite, inputs=[args.data])
    except ElmaError as err:
        p.error(str(err))
    examples = load_squad(Path(args.data), check_offsets=False, labels=False)[: args.limit + args.warmup]
    questions = [(ex.question, ex.context) for ex in examples]
    warm, timed = questions[: args.warmup], questions[args.warmup:]
    runtimes = {f"{args.option}={v}": Runtime.open(args.bundle, backend="onnxruntime",
                                                   options=dataclasses.replace(OrtOptions(), **{args.option: v}))
                for v in (False, True)}
    try:
        time_pair(runtimes, warm, args.policy)
        ms, answers = time_pair(runtimes, timed, args.policy)
    finally:
        for rt in runtimes.values():
            rt.close()
    off, on = runtimes
    ci = ratio_ci(ms[off], ms[on], reference=off)
    differ = sum(a != b for a, b in zip(answers[off], answers[on]))
    result = {"bundle": args.bundle, "data": args.data, "questions": len(timed), "policy": args.policy,
              "machine": platform.platform(), "mean_ms": {k: sum(v) / len(v) for k, v in ms.items()},
              "speedup_of_on": dataclasses.asdict(ci), "answers_that_differ": differ}
    print(f"{len(timed)} questions, policy {args.policy}: {off} {result['mean_ms'][off]:.2f} ms, "
          f"{on} {result['mean_ms'][on]:.2f} ms; {on} is {ci.ratio:.3f}x [{ci.low:.3f}, {ci.high:.3f}] "
          f"as fast; {differ} answers differ")
    if args.out:
        write_json(args.out, result, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
