"""TensorRT backend against ONNX Runtime on real questions, and the per-layer chain against ``fused.plan``.

The Python half of ``benchmarks/gpu_check.sh`` (run that on a GPU machine; this needs engines built already):

* **answers**: every question through both backends at full depth (policy ``none``) and with the bundle's
  calibrated policy; counts equal answer texts and equal exit layers, and the largest difference of the
  last exit's start/end logits on the first window of each question;
* **latency** (tensorrt, batch 1, one window): the full-depth per-layer chain as the runtime runs it
  (embeddings, every layer, the last exit head) against ``run_fused`` on ``fused.plan``, interleaved
  round-robin, medians and their ratio.

    python benchmarks/gpu_compare.py BUNDLE --data dev.json [--limit 200] [--reference onnxruntime] [--repeats 200]

Prints one JSON object; exits 1 when fewer than ``--min-agreement`` of the full-depth answers agree.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np


def compare_answers(a, b, examples, policies) -> Dict[str, Dict[str, float]]:
    """For each policy: questions, equal texts, equal exit layers (runtimes ``a`` and ``b``)."""
    out = {}
    for policy in policies:
        same_text = same_layer = 0
        for ex in examples:
            x = a.ask(ex.question, ex.context, policy=policy)
            y = b.ask(ex.question, ex.context, policy=policy)
            same_text += x.text == y.text
            same_layer += x.exit_layer == y.exit_layer
        n = max(len(examples), 1)
        out[policy] = {"questions": len(examples), "same_text": same_text, "same_exit_layer": same_layer,
                       "same_text_rate": same_text / n, "same_exit_layer_rate": same_layer / n}
    return out


def last_exit_logits(rt, ids, mask, types):
    backend = rt.backend
    hidden = backend.embed(ids, types)
    for slot in range(backend.num_layers):
        hidden = backend.run_layer(slot, hidden, mask)
    return backend.run_exit(backend.num_layers - 1, hidden, mask)


def batch_of(rt, question: str, context: str):
    window = rt.windows([(question, context)])[0]
    ids = np.asarray([window.input_ids], dtype=np.int32)  # (1, T)
    return ids, np.ones_like(ids), np.asarray([window.token_type_ids], dtype=np.int32)


def max_logit_diff(a, b, examples) -> float:
    """Largest |start/end logit| difference of the last exit between two runtimes, first window of each question."""
    worst = 0.0
    for ex in examples:
        ids, mask, types = batch_of(a, ex.question, ex.context)
        for x, y in zip(last_exit_logits(a, ids, mask, types), last_exit_logits(b, ids, mask, types)):
            worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))))
    return worst


def chain_vs_fused(rt, question: str, context: str, repeats: int = 200, warmup: int = 10) -> Dict[str, float]:
    """Medians (ms) of the full-depth per-layer chain and of ``run_fused`` on one window, interleaved."""
    ids, mask, types = batch_of(rt, question, context)
    backend = rt.backend
    if not hasattr(backend, "run_fused"):
        raise SystemExit(f"the {backend.name} backend has no run_fused; compare with --backend tensorrt")
    fused_s, fused_e = backend.run_fused(ids, mask, types)
    chain_s, chain_e = last_exit_logits(rt, ids, mask, types)
    agreement = float(max(np.max(np.abs(fused_s - chain_s)), np.max(np.abs(fused_e - chain_e))))
    cases = {"chain": lambda: last_exit_logits(rt, ids, mask, types), "fused": lambda: backend.run_fused(ids, mask, types)}
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, fn in cases.items():  # round-robin: the same noise for both
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    chain_ms, fused_ms = statistics.median(times["chain"]), statistics.median(times["fused"])
    return {"tokens": int(ids.shape[1]), "repeats": repeats, "chain_ms": chain_ms, "fused_ms": fused_ms,
            "chain_over_fused": chain_ms / fused_ms, "max_abs_logit_diff_chain_vs_fused": agreement}


def main(argv=None) -> int:
    from elma.data.squad import load_squad
    from elma.runtime.engine import Runtime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="bundle with engines (`elma build-engines`)")
    p.add_argument("--data", required=True, help="SQuAD 2.0 file")
    p.add_argument("--limit", type=int, default=200, help="questions compared (default 200)")
    p.add_argument("--backend", default="tensorrt", help="backend under test (default tensorrt)")
    p.add_argument("--reference", default="onnxruntime", help="reference backend (default onnxruntime)")
    p.add_argument("--reference-providers", default="CPUExecutionProvider",
                   help="onnxruntime providers of the reference, comma-separated (default: the CPU, so that the "
                        "reference does not run TensorRT itself)")
    p.add_argument("--repeats", type=int, default=200, help="latency repeats (0: skip the latency part)")
    p.add_argument("--min-agreement", type=float, default=0.97, help="least share of equal full-depth answers")
    args = p.parse_args(argv)
    examples = load_squad(Path(args.data), check_offsets=False)[: args.limit]
    from elma.runtime.backends import OrtOptions

    ref_options = {}
    if args.reference == "onnxruntime":
        ref_options["options"] = OrtOptions(providers=tuple(args.reference_providers.split(",")))
    with Runtime.open(args.bundle, backend=args.backend) as test, \
            Runtime.open(args.bundle, backend=args.reference, **ref_options) as ref:
        policies = ["none"] + ([ref.info.default_policy] if ref.info.default_policy not in (None, "none") else [])
        report = {"bundle": args.bundle, "backend": test.backend.describe(), "reference": ref.backend.describe(),
                  "answers": compare_answers(test, ref, examples, policies),
                  "max_abs_last_exit_logit_diff": max_logit_diff(test, ref, examples)}
        if args.repeats > 0 and examples:
            report["latency"] = chain_vs_fused(test, examples[0].question, examples[0].context, args.repeats)
    print(json.dumps(report, indent=2))
    return 0 if report["answers"]["none"]["same_text_rate"] >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
