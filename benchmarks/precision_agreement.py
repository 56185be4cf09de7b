"""Bundles of one model at several precisions: official F1 of each and answer agreement with the first.

Every bundle answers the same questions at full depth through ONNX Runtime (batch 1, policy ``none``);
"same answer" compares the official-format prediction text ("" for no answer).

    python benchmarks/precision_agreement.py FP32_BUNDLE INT8_BUNDLE FP16_BUNDLE --data dev.json [--limit 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from elma.data.squad import load_squad
from elma.metrics.squad_v2 import squad_v2_scores
from elma.runtime.engine import Runtime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", help="bundle folders; the first is the reference")
    p.add_argument("--data", required=True, help="SQuAD file with gold answers")
    p.add_argument("--limit", type=int, help="first N questions only")
    args = p.parse_args(argv)
    examples = load_squad(Path(args.data))[: args.limit]
    gold = {e.qid: e.answer_texts for e in examples}
    rows, answers = [], {}
    for bundle in args.bundles:
        runtime = Runtime.open(bundle, backend="onnxruntime", policy="none")
        began = time.perf_counter()
        answers[bundle] = {e.qid: runtime.ask(e.question, e.context).text for e in examples}
        wall_s = time.perf_counter() - began
        scores = squad_v2_scores(gold, answers[bundle])
        ref = answers[args.bundles[0]]
        same = sum(ref[q] == answers[bundle][q] for q in ref)
        rows.append({"bundle": bundle, "questions": len(examples), "f1": scores["f1"], "HasAns_f1": scores.get("HasAns_f1"),
                     "NoAns_f1": scores.get("NoAns_f1"), "same_answer_as_first": same, "wall_s": wall_s})
    print(json.dumps({"data": args.data, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
