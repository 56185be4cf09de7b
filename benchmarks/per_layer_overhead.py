"""Per-layer chain vs fused graph, side by side in one run (ONNX Runtime, batch 1).

What the early-exit runtime adds over a conventional model is the dispatch of
one graph per layer and exit head plus the exit decision between layers. This
script measures, interleaved round-robin so that machine noise hits all of them
alike:

* ``fused_ms``: the bundle's fused graph (embeddings, every layer, the last exit head), one session run;
* ``chain_ms``: the same input through the runtime's steps at full depth as an early-exit policy runs
  them (embeddings, and per layer the layer graph, its exit head and the exit decision) with the
  runtime's session options;
* ``full_depth_chain_ms``: the steps the runtime runs at full depth (policy ``none``): embeddings, every
  layer graph, the last exit head only (a policy that never exits reads no earlier head);
* ``decision_ms``: the exit decision alone (the policy's ``decide`` on one exit's logits);
* ``static_ms[k]``: ``Runtime.ask`` exiting after layer k (tokenisation and span decoding included).

and prints one JSON object with medians, ``full_depth_over_fused`` (the issue's target: full depth through
the per-layer path at most 1.05 x the fused graph) and ``chain_over_fused`` (what watching every exit adds).
Do not compare numbers from different machines or loads.

    python benchmarks/per_layer_overhead.py BUNDLE [--repeats 200] [--threads 2] [--policy entropy:0.4,0.4]
    python benchmarks/per_layer_overhead.py BUNDLE --sweep     # every intra-op thread count x spinning on/off

``--sweep`` runs the comparison for intra-op threads 1, 2, ..., the core count and 0 (onnxruntime's
default), each with spinning off and on, and prints every report plus the set-up with the lowest
``chain_ms``: the evidence for ``OrtOptions``' defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France. "
           "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their leader "
           "Rollo, agreed to swear fealty to King Charles III of West Francia.")
QUESTION = "Who was the leader of the Norse raiders?"


@dataclass(frozen=True)
class OverheadReport:
    bundle: str
    tokens: int  # window length (batch 1)
    num_layers: int
    repeats: int
    intra_op_threads: int  # 0 = onnxruntime's default
    allow_spinning: bool
    fused_ms: float  # medians
    chain_ms: float
    chain_over_fused: float
    full_depth_chain_ms: float
    full_depth_over_fused: float
    decision_ms: float
    static_ms: Dict[int, float]


def measure(bundle_path: str, repeats: int = 200, warmup: int = 10, threads: int = 0, allow_spinning: bool = False,
            policy: str = "entropy:0.4,0.4", question: str = QUESTION, context: str = CONTEXT) -> OverheadReport:
    from elma.runtime.backends import OrtOptions, import_onnxruntime, session_options
    from elma.runtime.engine import Runtime
    from elma.runtime.policies import parse_policy

    ort = import_onnxruntime()
    options = OrtOptions(intra_op_threads=threads, allow_spinning=allow_spinning, providers=("CPUExecutionProvider",))
    rt = Runtime.open(bundle_path, options=options, policy="none")
    decide = parse_policy(policy).decide
    fused = ort.InferenceSession(str(rt.backend.bundle.fused), session_options(ort, options),
                                 providers=["CPUExecutionProvider"])
    window = rt.windows([(question, context)])[0]
    ids = np.asarray([window.input_ids], dtype=np.int32)  # (1, T)
    types = np.asarray([window.token_type_ids], dtype=np.int32)
    mask = np.ones_like(ids)
    answer_mask = np.array([i == 0 or o is not None for i, o in enumerate(window.offsets)])
    backend = rt.backend

    def run_fused():
        fused.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})

    def run_chain():
        hidden = backend.embed(ids, types)
        state = None
        for slot in range(backend.num_layers):
            hidden = backend.run_layer(slot, hidden, mask)
            start, end = backend.run_exit(slot, hidden, mask)
            state = decide(slot + 1, start[0], end[0], answer_mask, state).state

    def run_full_depth():
        hidden = backend.embed(ids, types)
        for slot in range(backend.num_layers):
            hidden = backend.run_layer(slot, hidden, mask)
        backend.run_exit(backend.num_layers - 1, hidden, mask)

    start_logits, end_logits = backend.run_exit(0, backend.run_layer(0, backend.embed(ids, types), mask), mask)

    def run_decision():
        decide(1, start_logits[0], end_logits[0], answer_mask, None)

    cases = {"fused": run_fused, "chain": run_chain, "full_depth": run_full_depth, "decision": run_decision}
    for k in range(1, rt.num_layers + 1):
        cases[f"static{k}"] = (lambda k=k: rt.ask(question, context, policy=f"static:{k}"))
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, fn in cases.items():  # round-robin: the same noise for every case
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(v) for name, v in times.items()}
    rt.close()
    return OverheadReport(str(bundle_path), int(ids.shape[1]), rt.num_layers, repeats, threads, allow_spinning,
                          med["fused"], med["chain"], med["chain"] / med["fused"], med["full_depth"],
                          med["full_depth"] / med["fused"], med["decision"],
                          {k: med[f"static{k}"] for k in range(1, rt.num_layers + 1)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    p.add_argument("--allow-spinning", action="store_true", help="onnxruntime's default thread spinning (for comparison)")
    p.add_argument("--policy", default="entropy:0.4,0.4", help="policy whose decision is timed in the chain")
    p.add_argument("--sweep", action="store_true", help="try every thread count with spinning off and on")
    args = p.parse_args(argv)
    if not args.sweep:
        report = measure(args.bundle, args.repeats, args.warmup, args.threads, args.allow_spinning, args.policy)
        print(json.dumps(asdict(report), indent=2))
        return 0
    cores = os.cpu_count() or 1
    reports = [measure(args.bundle, args.repeats, args.warmup, threads, spinning, args.policy)
               for threads in sorted(set(range(1, cores + 1))) + [0] for spinning in (False, True)]
    best = min(reports, key=lambda r: r.chain_ms)
    print(json.dumps({"reports": [asdict(r) for r in reports],
                      "fastest_chain": {"intra_op_threads": best.intra_op_threads, "allow_spinning": best.allow_spinning,
                                        "chain_ms": best.chain_ms, "chain_over_fused": best.chain_over_fused}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
