"""Do null-score thresholds fitted on one labelled file carry over to real unanswerable questions?

The trainer fits each exit's no-answer threshold on its ``--eval-file`` (the official best-F1 search). When that
file's unanswerable questions are mostly synthetic twins (``elma prepare-data --heldout-negative-rate``), the
thresholds may suit them and not the real, adversarial ones. This scores a model's exits on a file of real
questions (``--real``) three ways:

- ``stored``: the thresholds in the model's config.json (what ``elma predict`` applies);
- ``cross-fitted``: thresholds fitted on one half of the real file's paragraphs and applied to the other half, both
  ways (an honest estimate of what fitting on real questions gives on unseen ones);
- ``in-sample``: fitted on the whole real file and scored on it (optimistic; what a model fitted there reports).

Usage (held-out files only, never dev); ``--title`` keeps one article and ``--real-only`` drops the synthetic twins
(ids ``<qid>-neg-<recipe>``, ``elma/data/negatives.py``):

    python benchmarks/null_threshold_transfer.py MODEL --real heldout.json --title "Spectre_(2015_film)" --real-only \
        [--out R.json]
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _scores(results, examples, thresholds: Sequence[float]) -> List[dict]:
    from elma.predict import score_exits, with_null_thresholds

    return [{"exit": r["exit_layer"], "threshold": r["null_threshold"], "f1": r["f1"], "HasAns_f1": r.get("HasAns_f1"),
             "NoAns_f1": r.get("NoAns_f1"), "null_auc": r["null_auc"], "n": len(examples)}
            for r in score_exits(with_null_thresholds(results, thresholds), examples)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--real", required=True, help="SQuAD 2.0 file of real questions (held-out articles)")
    ap.add_argument("--title", help="keep only this article")
    ap.add_argument("--real-only", action="store_true", help="drop synthetic unanswerable twins (-neg- ids)")
    ap.add_argument("--out", help="write the rows as JSON (an existing file is refused)")
    args = ap.parse_args(argv)
    if args.out and Path(args.out).exists():
        ap.error(f"{args.out}: already exists; choose another --out")

    from elma.data.squad import load_squad
    from elma.model.loading import load_model
    from elma.predict import calibrate_null_thresholds, predict_all_exits

    model, tok = load_model(args.model)
    examples = [ex for ex in load_squad(Path(args.real))
                if (args.title is None or ex.title == args.title) and not (args.real_only and "-neg-" in ex.qid)]
    if not examples:
        ap.error("no question left after --title / --real-only")
    stored = list(model.exit_config.null_thresholds or (0.0,) * model.num_exits)
    results = predict_all_exits(model, tok, examples)

    # two folds by paragraph (context), alternating in file order, so both halves span the article
    contexts: Dict[str, int] = {}
    for ex in examples:
        contexts.setdefault(ex.context, len(contexts))
    fold = [contexts[ex.context] % 2 for ex in examples]

    def take(idx: List[int]):
        sub_ex = [examples[i] for i in idx]
        sub_res = []
        for res in results:
            r = type(res)(res.exit_layer, [res.answers[i] for i in idx], res.null_threshold)
            sub_res.append(r)
        return sub_res, sub_ex

    halves = [take([i for i, f in enumerate(fold) if f == k]) for k in (0, 1)]
    cross = []
    for k in (0, 1):
        fitted = calibrate_null_thresholds(*halves[1 - k])
        cross.append(_scores(*halves[k], fitted))
    n = [len(h[1]) for h in halves]
    cross_rows = []
    for a, b in zip(*cross):  # question-weighted mean of the two halves
        row = {"exit": a["exit"], "thresholds": [a["threshold"], b["threshold"]], "n": a["n"] + b["n"]}
        for key in ("f1", "HasAns_f1", "NoAns_f1"):
            row[key] = (a[key] * n[0] + b[key] * n[1]) / (n[0] + n[1])
        cross_rows.append(row)
    report = {"model": args.model, "real": args.real, "title": args.title, "real_only": args.real_only,
              "questions": len(examples),
              "unanswerable": sum(1 for ex in examples if not ex.answer_texts),
              "stored": _scores(results, examples, stored), "cross_fitted": cross_rows,
              "in_sample": _scores(results, examples, calibrate_null_thresholds(results, examples))}
    print(f"{args.model} on {args.real}: {report['questions']} questions, {report['unanswerable']} unanswerable")
    print("| exit | null AUC | F1 stored (NoAns) | F1 cross-fitted (NoAns) | F1 in-sample | stored / in-sample threshold |")
    print("|---|---|---|---|---|---|")
    for s, c, i in zip(report["stored"], report["cross_fitted"], report["in_sample"]):
        print(f"| {s['exit']} | {s['null_auc']:.1f} | {s['f1']:.2f} ({s['NoAns_f1']:.1f}) | {c['f1']:.2f} "
              f"({c['NoAns_f1']:.1f}) | {i['f1']:.2f} | {s['threshold']:.3f} / {i['threshold']:.3f} |")
    if args.out:
        from elma.fsutil import write_json

        write_json(args.out, report, overwrite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
