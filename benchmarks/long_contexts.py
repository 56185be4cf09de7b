"""Write the questions of a SQuAD file whose context is long for a model: a file to calibrate or measure skimming on.

A question is kept when the first window its context is cut into holds at least ``--min-tokens`` tokens (question,
separators and context, the model's window geometry: the test of ``benchmarks/skim_tokens.py --min-tokens``).
Articles and paragraphs keep their titles, so ``elma calibrate`` still splits the file by article.

    python benchmarks/long_contexts.py BUNDLE --data heldout.json --min-tokens 300 -o heldout-long.json

Prints one JSON object: questions read and kept. An existing output is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="bundle or ELMA model folder (its tokenizer and window geometry)")
    p.add_argument("--data", required=True, help="SQuAD 1.1/2.0 file")
    p.add_argument("--min-tokens", type=int, required=True, help="tokens of the first window, at least")
    p.add_argument("-o", "--output", required=True, help="the SQuAD file of the long questions")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from elma.fsutil import write_json
    from elma.runtime.engine import Runtime

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        p.error(f"{out} exists; pass --overwrite to replace it")
    payload = json.loads(Path(args.data).read_text(encoding="utf-8"))
    read = kept = 0
    with Runtime.open(args.model, policy="none") as rt:
        data = []
        for article in payload["data"]:
            paragraphs = []
            for para in article["paragraphs"]:
                qas = []
                for qa in para["qas"]:
                    read += 1
                    if len(rt.windows([(qa["question"], para["context"])])[0]) >= args.min_tokens:
                        qas.append(qa)
                if qas:
                    paragraphs.append({**para, "qas": qas})
                    kept += len(qas)
            if paragraphs:
                data.append({**article, "paragraphs": paragraphs})
    if not kept:
        p.error(f"no question in {args.data} has a first window of {args.min_tokens} tokens or more")
    write_json(out, {"version": payload.get("version", "v2.0"), "data": data}, overwrite=True)
    print(json.dumps({"questions": read, "kept": kept, "min_tokens": args.min_tokens, "output": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
