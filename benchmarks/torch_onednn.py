"""PyTorch eager with oneDNN on and off: resident memory over a run, and latency interleaved question by question.

    python benchmarks/torch_onednn.py BUNDLE --torch-model MODEL_DIR --data dev.json --limit 400 \\
        [--out benchmarks/results/torch-onednn.json [--overwrite]]

``elma-bench``'s PyTorch eager baseline (``elma.bench.configs.TorchEagerConfig``) on the bundle's windows:

* memory: each setting in its own child process (what oneDNN caches is per process), resident memory after the
  warm-up questions, after every hundred questions and at the end;
* latency: both settings in this process, the same model loaded twice, timed by ``elma-bench``'s own interleaved
  schedule (``elma.bench.schedule.run_interleaved``: each question answered by both back to back, the order
  alternating), so that machine noise hits both alike; the speed-up of "off" with a paired bootstrap 95% interval
  (``elma.bench.bootstrap.ratio_ci``) and how many answers differ.

Speed is measured here, never in unit tests; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys

SETTINGS = {"on": True, "off": False}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


def _examples(data: str, n: int):
    from elma.bench.runner import load_examples

    return load_examples(data, n)


def memory_child(bundle: str, torch_model: str, data: str, limit: int, warmup: int, setting: str) -> dict:
    from elma.bench.configs import TorchEagerConfig
    from elma.runtime.engine import Runtime

    examples = _examples(data, limit + warmup)
    with Runtime.open(bundle, policy="none") as rt:
        cfg = TorchEagerConfig(torch_model, rt, use_onednn=SETTINGS[setting])
        for ex in examples[:warmup]:
            cfg.answer(ex)
        out = {"setting": setting, "rss_after_warmup_mib": round(_rss_mib(), 1), "rss_per_100_mib": []}
        for i, ex in enumerate(examples[warmup:]):
            cfg.answer(ex)
            if i % 100 == 99:
                out["rss_per_100_mib"].append(round(_rss_mib(), 1))
        out["rss_end_mib"] = round(_rss_mib(), 1)
        out["growth_mib"] = round(out["rss_end_mib"] - out["rss_after_warmup_mib"], 1)
    return out


def main(argv=None) -> int:
    from elma.errors import ElmaError
    from elma.fsutil import Output, check_outputs, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--torch-model", required=True, help="the ELMA model folder of the bundle")
    p.add_argument("--data", required=True, help="SQuAD JSON (questions and contexts)")
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--memory-child", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.bundle, args.torch_model, args.data, args.limit, args.warmup,
                                      args.memory_child)))
        return 0
    try:  # before any work: a taken --out is refused, not found out after minutes
        check_outputs([Output(args.out, "--out")], args.overwrite, inputs=[args.data])
    except ElmaError as err:
        p.error(str(err))
    memory = []
    for setting in SETTINGS:
        proc = subprocess.run([sys.executable, __file__, args.bundle, "--torch-model", args.torch_model, "--data",
                               args.data, "--limit", str(args.limit), "--warmup", str(args.warmup),
                               "--memory-child", setting], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        memory.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    from elma.bench.bootstrap import ratio_ci
    from elma.bench.configs import TorchEagerConfig
    from elma.bench.schedule import run_interleaved, warm_up
    from elma.runtime.engine import Runtime

    examples = _examples(args.data, args.limit + args.warmup)
    with Runtime.open(args.bundle, policy="none") as rt:
        configs = [TorchEagerConfig(args.torch_model, rt, use_onednn=v) for v in SETTINGS.values()]
        warm_up(configs, examples, args.warmup)
        schedule = run_interleaved(configs, examples[args.warmup:])
    on, off = (f"onednn {s}" for s in SETTINGS)
    ms = {name: [r.latency_ms for r in results] for name, results in zip((on, off), schedule.results[0])}
    answers = {name: [r.prediction for r in results] for name, results in zip((on, off), schedule.results[0])}
    ci = ratio_ci(ms[on], ms[off], reference=on)
    differ = sum(a != b for a, b in zip(answers[on], answers[off]))
    result = {"bundle": args.bundle, "torch_model": args.torch_model, "data": args.data,
              "questions": len(examples) - args.warmup, "warmup": args.warmup, "machine": platform.platform(),
              "memory": memory, "mean_ms": {k: sum(v) / len(v) for k, v in ms.items()},
              "speedup_of_off": dataclasses.asdict(ci), "answers_that_differ": differ}
    print(f"{result['questions']} questions: oneDNN on grew {memory[0]['growth_mib']} MiB, off {memory[1]['growth_mib']} "
          f"MiB; on {result['mean_ms'][on]:.2f} ms, off {result['mean_ms'][off]:.2f} ms: off is {ci.ratio:.3f}x "
          f"[{ci.low:.3f}, {ci.high:.3f}] as fast; {differ} answers differ")
    if args.out:
        write_json(args.out, result, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
