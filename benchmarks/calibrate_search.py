"""How long ``elma calibrate`` takes after the forward pass: simulating and testing every grid setting.

The model's forward pass is not run: a synthetic recording of N questions stands in for it, with every exit's
logits drawn so that the distributions sharpen with depth (exits then spread over the layers, as with a trained
model), reduced to the compact record ``elma calibrate`` keeps (``elma.bench.sweep.ExitRecorder``: statistics,
best spans and their F1 per window and exit). Everything after is the real code: every policy's grid on the
learn part, the simulation of each setting, Learn then Test. Prints one JSON object: seconds per stage,
settings tested, and the process's peak resident memory.

    python benchmarks/calibrate_search.py [--questions 6000] [--layers 12] [--tokens 384] [--risk consistency]

Needs a quiet machine for figures (it is single-threaded numpy and Python).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from elma.bench.sweep import ExitRecorder
from elma.data.squad import Answer, Example
from elma.runtime.calibrate import CALIBRATED_POLICIES, Recordings
from elma.runtime.certify import certify, choose_default, split_questions


def synthetic_recording(questions: int, layers: int, tokens: int, seed: int = 0) -> Recordings:
    """A recording with one window per question (every 20th question has two), 12 articles' worth of titles."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(tokens)]
    context = " ".join(words)
    offsets, pos = [None] * 8, 0  # CLS and question tokens carry no offsets
    for w in words[: tokens - 9]:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    offsets.append(None)  # SEP
    recorder = ExitRecorder(layers, [0.0] * layers)
    examples = []
    t0 = time.perf_counter()
    for q in range(questions):
        start = int(rng.integers(8, tokens - 12))
        answer = Answer(context[offsets[start][0]:offsets[start + 1][1]], offsets[start][0])
        example = Example(f"q{q}", f"article {q % max(12, questions // 20)}", "question?", context, (answer,), False)
        windows = 2 if q % 20 == 0 else 1
        logits = []
        for _ in range(windows):
            sharp = np.linspace(0.5, 8.0, layers)[:, None, None] * rng.uniform(0.3, 1.5)  # (L, 1, 1)
            target = np.zeros((2, tokens), dtype=np.float32)
            target[0, start] = target[1, start + 1] = 1.0
            noise = rng.normal(0, 1, (layers, 2, tokens)).astype(np.float32)
            logits.append((noise + sharp * target[None]).astype(np.float32))  # (L, 2, T)
        recorder.add(example, [(offsets, lg) for lg in logits])
        examples.append(example)
    return Recordings(examples, {"": recorder.finish()}, time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=6000)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--tokens", type=int, default=384)
    p.add_argument("--risk", choices=["f1", "consistency"], default="consistency")
    p.add_argument("--delta", type=float, default=2.0, help="F1 points")
    p.add_argument("--policies", default=",".join(CALIBRATED_POLICIES))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    recorded = synthetic_recording(args.questions, args.layers, args.tokens)
    split = split_questions(recorded.examples, 0.2, 0.25, seed=0)
    t1 = time.perf_counter()
    policies = [x for x in args.policies.split(",") if x]
    certs, points, _ = certify(recorded, split, args.risk, args.delta, 0.1, policies)
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0 ** 2)
    print(json.dumps({"questions": args.questions, "layers": args.layers, "tokens": args.tokens,
                      "windows": recorded.num_windows, "settings": points, "synthesis_s": round(t1 - t0, 2),
                      "search_s": round(t2 - t1, 2), "peak_rss_mb": round(peak_mb, 1),
                      "default": choose_default(certs),
                      "certified": {k: c.spec for k, c in certs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
