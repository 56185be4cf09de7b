"""Markdown table of per-exit official scores, from ``elma predict --all-exits-out`` or ``eval_results.json``.

    python benchmarks/exit_table.py benchmarks/results/reference-dev-exits.json
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scores", help="JSON with an 'exits' list")
    args = p.parse_args(argv)
    print(table(json.loads(Path(args.scores).read_text())["exits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
