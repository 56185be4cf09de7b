"""An exit policy against full depth, interleaved question by question in one run (batch 1).

The quick three-way version of what ``elma-bench`` reports (which interleaves every configuration the same
way, with bootstrap intervals): every question is asked with the policy, then at full depth (policy ``none``:
the per-layer chain with the last exit head only), then through the bundle's fused graph, round-robin, so
that machine noise hits all three alike. Prints one JSON object: mean and median latency of each, the
speed-ups, mean exit layer, and the official F1 of each over the questions.

    python benchmarks/policy_speedup.py BUNDLE --data dev.json [--policy SPEC] [--limit 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from elma.data.squad import load_squad
from elma.metrics.squad_v2 import squad_v2_scores
from elma.runtime.engine import Runtime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="SQuAD file with gold answers")
    p.add_argument("--policy", help="exit policy (default: the bundle's calibrated default)")
    p.add_argument("--limit", type=int, default=500, help="first N questions (default 500)")
    p.add_argument("--warmup", type=int, default=8)
    args = p.parse_args(argv)
    from elma.bench.configs import FusedConfig

    examples = load_squad(Path(args.data))[: args.limit]
    rt = Runtime.open(args.bundle)
    policy = rt.resolve_policy(args.policy)
    fused = FusedConfig(rt, "fused").answer  # Backend.run_fused: the bundle's fused graph

    def text(answer) -> str:  # a runtime Answer or a bench Outcome
        return answer.prediction if hasattr(answer, "prediction") else ("" if answer.no_answer else answer.text)

    cases = {"policy": lambda e: rt.ask(e.question, e.context, policy=policy),
             "full_depth": lambda e: rt.ask(e.question, e.context, policy="none"), "fused": fused}
    for e in examples[: args.warmup]:
        for fn in cases.values():
            fn(e)
    ms = {name: [] for name in cases}
    preds = {name: {} for name in cases}
    layers = []
    for e in examples:
        for name, fn in cases.items():
            t0 = time.perf_counter()
            answer = fn(e)
            ms[name].append((time.perf_counter() - t0) * 1e3)
            preds[name][e.qid] = text(answer)
            if name == "policy":
                layers.append(answer.exit_layer)
    gold = {e.qid: e.answer_texts for e in examples}
    mean = {name: statistics.mean(v) for name, v in ms.items()}
    out = {"bundle": args.bundle, "policy": policy.spec, "questions": len(examples),
           "mean_exit_layer": statistics.mean(layers), "num_layers": rt.num_layers,
           "mean_ms": mean, "median_ms": {name: statistics.median(v) for name, v in ms.items()},
           "speedup_vs_full_depth": mean["full_depth"] / mean["policy"], "speedup_vs_fused": mean["fused"] / mean["policy"],
           "full_depth_over_fused": mean["full_depth"] / mean["fused"],
           "f1": {name: squad_v2_scores(gold, p)["f1"] for name, p in preds.items()}}
    rt.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
