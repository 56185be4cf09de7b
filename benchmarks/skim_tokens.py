"""Skimming and early exit in one run: token-layers, F1 and interleaved latency for a list of policy specs.

Every question is asked at full depth without skimming (policy ``none``: the reference for token-layers and
F1), with each ``--policy`` spec, and through the bundle's fused graph (the latency reference), round-robin,
so that machine noise hits every configuration alike (batch 1). Prints one JSON object; per spec: mean
token-layers per question (tokens times layers run, over the question's windows, from
``Answer.tokens_per_layer``) and its ratio to full depth, mean tokens per layer run, mean exit layer, the
official F1 and its change against full depth, mean and median latency and the speed-ups.

    python benchmarks/skim_tokens.py BUNDLE --data dev.json --policy none+skim:2,0.001 \\
        --policy entropy:2.4,2.9+skim:2,0.001 [--limit 500] [--min-tokens 300]

``--write-subset FILE`` writes the questions selected by ``--min-tokens`` / ``--max-tokens`` / ``--limit`` as a SQuAD
file and times nothing. ``--min-tokens`` keeps the questions whose first window holds at least that many tokens (long contexts,
where skimming should pay); ``--max-tokens`` the ones with fewer (short contexts, where it should not). Where a
spec loses F1, ``questions_worse`` counts the questions it answers worse than full depth, with their mean F1 drop
(``mean_f1_drop_where_worse``): the answers skimmed away or exited from too early. Timings need a quiet machine;
on a tiny bundle this only checks the wiring.

    python benchmarks/skim_tokens.py BUNDLE --data dev.json --policy none+skim:2,0.001 --max-tokens 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from time import perf_counter

from elma.data.squad import load_squad
from elma.metrics.squad_v2 import question_f1, squad_v2_scores
from elma.runtime.engine import Runtime
from elma.runtime.policies import parse_policy

FULL = "none"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="SQuAD file with gold answers")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="a policy spec with or without skim stages (repeat for several)")
    p.add_argument("--limit", type=int, default=500, help="first N questions, after --min-tokens (default 500)")
    p.add_argument("--min-tokens", type=int, default=0, help="only questions whose first window has this many tokens")
    p.add_argument("--max-tokens", type=int, help="only questions whose first window has fewer tokens than this")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--no-fused", action="store_true", help="leave out the fused graph")
    p.add_argument("--write-subset", metavar="FILE", help="write the selected questions as a SQuAD file (e.g. for "
                   "elma-bench) and stop, timing nothing; an existing FILE is refused")
    args = p.parse_args(argv)
    if args.write_subset and Path(args.write_subset).exists():
        p.error(f"{args.write_subset}: already there")
    if args.max_tokens is not None and args.max_tokens <= args.min_tokens:
        p.error(f"--max-tokens {args.max_tokens} must be above --min-tokens {args.min_tokens}")
    for spec in args.policy:
        try:
            parse_policy(spec)
        except ValueError as err:
            p.error(f"--policy {spec}: {err}")
    return p, args


def main(argv=None) -> int:
    p, args = parse_args(argv)
    examples = load_squad(Path(args.data))
    rt = Runtime.open(args.bundle)
    try:
        try:
            policies = {spec: rt.resolve_policy(spec) for spec in dict.fromkeys([FULL, *args.policy])}
        except ValueError as err:
            p.error(str(err))
        if args.min_tokens or args.max_tokens is not None:
            top = float("inf") if args.max_tokens is None else args.max_tokens
            examples = [e for e in examples if args.min_tokens <= len(rt.windows([(e.question, e.context)])[0]) < top]
        examples = examples[: args.limit]
        if not examples:
            p.error(f"no question in {args.data} has a first window of {args.min_tokens} to {args.max_tokens} tokens")
        if args.write_subset:
            write_subset(Path(args.data), {e.qid for e in examples}, Path(args.write_subset))
            print(f"wrote {len(examples)} questions to {args.write_subset}")
            return 0
        out = measure(rt, examples, policies, args.warmup, fused=not args.no_fused)
    finally:
        rt.close()
    out = {"bundle": args.bundle, "questions": len(examples), "num_layers": rt.num_layers,
           "min_tokens": args.min_tokens, "max_tokens": args.max_tokens, **out}
    print(json.dumps(out, indent=2))
    return 0


def write_subset(data: Path, qids: set, target: Path) -> None:
    """The questions ``qids`` of the SQuAD file ``data``, articles and paragraphs as they were, written atomically."""
    from elma.fsutil import write_json

    payload = json.loads(data.read_text(encoding="utf-8"))
    for article in payload["data"]:
        for para in article["paragraphs"]:
            para["qas"] = [q for q in para["qas"] if q["id"] in qids]
        article["paragraphs"] = [para for para in article["paragraphs"] if para["qas"]]
    payload["data"] = [a for a in payload["data"] if a["paragraphs"]]
    write_json(target, payload, overwrite=False)


def measure(rt, examples, policies, warmup: int, fused: bool) -> dict:
    """Round-robin over the questions: every policy, then the fused graph; one dict of results."""
    cases = {spec: (lambda e, pol=pol: rt.ask(e.question, e.context, policy=pol)) for spec, pol in policies.items()}
    if fused:
        from elma.bench.configs import FusedConfig

        cases["fused"] = FusedConfig(rt, "fused").answer  # Backend.run_fused: the bundle's fused graph
    for e in examples[:warmup]:
        for fn in cases.values():
            fn(e)
    ms = {name: [] for name in cases}
    preds = {name: {} for name in cases}
    answers = {spec: [] for spec in policies}
    for e in examples:
        for name, fn in cases.items():
            t0 = perf_counter()
            a = fn(e)
            ms[name].append((perf_counter() - t0) * 1e3)
            preds[name][e.qid] = a.prediction if hasattr(a, "prediction") else ("" if a.no_answer else a.text)
            if name in answers:
                answers[name].append(a)
    gold = {e.qid: e.answer_texts for e in examples}
    f1 = {name: squad_v2_scores(gold, pr)["f1"] for name, pr in preds.items()}
    full_q = {e.qid: question_f1(gold[e.qid], preds[FULL][e.qid]) for e in examples}
    mean_ms = {name: statistics.mean(v) for name, v in ms.items()}
    full_tl = statistics.mean(a.token_layers for a in answers[FULL])
    rows = []
    for spec, pol in policies.items():
        got = answers[spec]
        token_layers = statistics.mean(a.token_layers for a in got)
        row = {"policy": pol.spec, "mean_token_layers": token_layers, "token_layers_vs_full": full_tl / token_layers,
               "mean_tokens_per_layer": statistics.mean(a.token_layers / a.exit_layer for a in got),
               "mean_exit_layer": statistics.mean(a.exit_layer for a in got), "f1": f1[spec],
               "f1_delta_vs_full": f1[spec] - f1[FULL], "mean_ms": mean_ms[spec],
               "median_ms": statistics.median(ms[spec]), "speedup_vs_full_depth": mean_ms[FULL] / mean_ms[spec],
               **worse_than_full(full_q, {q: question_f1(gold[q], a) for q, a in preds[spec].items()})}
        if fused:
            row["speedup_vs_fused"] = mean_ms["fused"] / mean_ms[spec]
        rows.append(row)
    out = {"policies": rows}
    if fused:
        out["fused"] = {"f1": f1["fused"], "mean_ms": mean_ms["fused"], "median_ms": statistics.median(ms["fused"])}
    return out


def worse_than_full(full_f1: dict, f1: dict) -> dict:
    """How many questions a configuration answers worse than full depth (per-question F1, 0-1), and by how much
    (F1 points)."""
    drops = [100 * (full_f1[q] - f1[q]) for q in full_f1 if f1[q] < full_f1[q]]
    return {"questions_worse": len(drops), "mean_f1_drop_where_worse": statistics.mean(drops) if drops else 0.0}


if __name__ == "__main__":
    sys.exit(main())
