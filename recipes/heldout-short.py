"""Rebuild ``heldout-short.json``, the 20% sample of the v3 held-out side (1,961 questions) that the phase rule and
the held-out looks score on, from the question ids that ``benchmarks/results/split-exits-heldout-short.json``
records: the sample outlives the machine it was drawn on. Questions keep the held-out file's order.

    python recipes/heldout-short.py ~/.cache/elma/data-v3/heldout.json -o ~/.cache/elma/data-v3/heldout-short.json
"""

import argparse
import json
import sys
from pathlib import Path

from elma.errors import ElmaError
from elma.fsutil import Output, check_outputs, write_json

IDS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "split-exits-heldout-short.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heldout", help="heldout.json of `elma prepare-data` (docs/reference-model-v3.md)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        check_outputs([Output(args.output, "-o")], args.overwrite, inputs=[args.heldout])
    except ElmaError as err:
        p.error(str(err))  # one line, exit 2
    wanted = {q["qid"] for q in json.loads(IDS.read_text())["questions"]}
    data = json.loads(Path(args.heldout).read_text())
    articles = []
    for article in data["data"]:
        paragraphs = [dict(par, qas=[q for q in par["qas"] if q["id"] in wanted]) for par in article["paragraphs"]]
        paragraphs = [par for par in paragraphs if par["qas"]]
        if paragraphs:
            articles.append(dict(article, paragraphs=paragraphs))
    found = sum(len(par["qas"]) for a in articles for par in a["paragraphs"])
    if found != len(wanted):
        sys.exit(f"heldout-short: {found} of the {len(wanted)} questions are in {args.heldout}: not the v3 split")
    write_json(Path(args.output), {"version": data.get("version", "v2.0"), "data": articles})
    print(f"wrote {args.output}: {found} questions from {len(articles)} articles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
