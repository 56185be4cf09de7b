"""Markdown table of per-exit official scores, from ``elma predict --all-exits-out`` or ``eval_results.json``.

    python benchmarks/exit_table.py benchmarks/results/reference-dev-exits.json
    python benchmarks/exit_table.py CANDIDATE.json --against BASELINE.json    # the reference model's shipping rule
    python benchmarks/exit_table.py PHASE2/eval_results.json --phase-rule PHASE1/eval_results.json

``--against``: the shipping rule of docs/reference-model-v3.md, written before any v3 figure was seen: the
candidate replaces the baseline only if its full-depth (last exit) F1 **and** null AUC are both at least the
baseline's, on the same questions. Prints both tables and the verdict; exit status 0 when the rule holds, 1 when
it does not, 2 when the files do not score the same questions.

``--phase-rule``: v3's second-recipe rule (docs/reference-model-v3.md, written before either phase had a figure):
phase 2 (self-distillation) is kept only if its full-depth HasAns span F1 is at most 0.5 below phase 1's **and** the
mean span F1 of exits 1-3 is higher than phase 1's. Same exit statuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = [("exit", "exit_layer", "{}"), ("EM", "exact", "{:.2f}"), ("F1", "f1", "{:.2f}"),
           ("HasAns EM", "HasAns_exact", "{:.2f}"), ("HasAns F1", "HasAns_f1", "{:.2f}"),
           ("NoAns F1", "NoAns_f1", "{:.2f}"),
           ("HasAns span F1", "HasAns_span_f1", "{:.1f}"), ("null AUC", "null_auc", "{:.1f}"),
           ("null threshold", "null_threshold", "{:.3f}"),
           ("questions", "total", "{}")]


def table(rows) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def shipping_rule(candidate: dict, baseline: dict) -> tuple:
    """(holds, reason): the candidate's last exit against the baseline's, on full-depth F1 and null AUC."""
    c, b = candidate["exits"][-1], baseline["exits"][-1]
    if c["total"] != b["total"]:
        raise ValueError(f"they score different question sets ({c['total']} vs {b['total']} questions)")
    gaps = {key: c[key] - b[key] for key in ("f1", "null_auc")}
    holds = all(g >= 0 for g in gaps.values())
    reason = ", ".join(f"{key} {c[key]:.2f} vs {b[key]:.2f} ({g:+.2f})" for key, g in gaps.items())
    return holds, reason


def phase_rule(phase2: dict, phase1: dict) -> tuple:
    """(keep phase 2, reason): full-depth span F1 at most 0.5 below phase 1's and exits 1-3 better on average."""
    a, b = phase2["exits"], phase1["exits"]
    if a[-1]["total"] != b[-1]["total"] or len(a) != len(b):
        raise ValueError(f"they score different question sets or depths ({a[-1]['total']} vs {b[-1]['total']} "
                         f"questions, {len(a)} vs {len(b)} exits)")
    full = a[-1]["HasAns_span_f1"] - b[-1]["HasAns_span_f1"]
    early = [sum(e["HasAns_span_f1"] for e in x[:3]) / 3 for x in (a, b)]
    keep = full >= -0.5 and early[0] > early[1]
    return keep, (f"full-depth span F1 {a[-1]['HasAns_span_f1']:.2f} vs {b[-1]['HasAns_span_f1']:.2f} ({full:+.2f}), "
                  f"exits 1-3 mean span F1 {early[0]:.2f} vs {early[1]:.2f} ({early[0] - early[1]:+.2f})")


def load_scores(path: str) -> dict:
    """A scores file (``elma predict --all-exits-out`` or a run's ``eval_results.json``), checked enough for the
    table and the rules: an ``exits`` list of per-exit dicts. Raises ValueError naming the file otherwise."""
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read scores ({err})") from err
    exits = scores.get("exits") if isinstance(scores, dict) else None
    if not isinstance(exits, list) or not exits or not all(isinstance(e, dict) for e in exits):
        raise ValueError(f"{path}: not a scores file (no 'exits' list of per-exit scores)")
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scores", help="JSON with an 'exits' list")
    p.add_argument("--against", metavar="BASELINE", help="apply the shipping rule against this model's scores")
    p.add_argument("--phase-rule", metavar="PHASE1", help="v3: keep this phase-2 model over phase 1's? (see above)")
    args = p.parse_args(argv)
    try:
        scores = load_scores(args.scores)
        print(table(scores["exits"]))
        if args.phase_rule:
            keep, reason = phase_rule(scores, load_scores(args.phase_rule))
            print(f"phase rule: {'keep phase 2' if keep else 'keep phase 1'}: {reason}")
            return 0 if keep else 1
        if not args.against:
            return 0
        baseline = load_scores(args.against)
        print(f"\nbaseline {args.against}\n\n{table(baseline['exits'])}\n")
        holds, reason = shipping_rule(scores, baseline)
    except KeyError as err:  # a rule's score missing from a file (one written before that score existed)
        print(f"exit_table: a scores file has no {err} per exit, which the rule reads", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"exit_table: {err}", file=sys.stderr)
        return 2
    print(f"shipping rule {'holds' if holds else 'does not hold'}: full depth {reason}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
