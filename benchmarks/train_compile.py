"""Does ``torch.compile`` make CPU training faster? Eager against compiled, side by side in one run.

Two copies of the same model (same weights, same AdamW) train on the same length-grouped batches, stepping in
turn (the order alternates every step, so that a busy machine slows both alike), each with the trainer's own
step (``elma.train.loop.train_step``), loss (the trainer's, with the run's exit weights and answerability heads)
and bf16 autocast. The compiled copy is ``torch.compile(module, dynamic=True)``: one graph for every sequence
length, so a length-grouped run does not recompile at each new length. Reported: compile time (the first step),
real (unpadded) tokens per second of each after ``--warmup`` steps, the compiled/eager ratio of per-step times
with a bootstrap 95% interval (and the median of the per-step ratios, which one slow recompilation does not
move), and how far the two copies' losses drift apart (the compiled kernels round
differently; the dropout draws differ too, since inductor generates its own random numbers).

    python benchmarks/train_compile.py --model BACKBONE --data TRAIN.json --steps 30 --threads 2 --out R.json

Time it on a quiet machine: pause a training run (``kill -STOP``) for the few minutes it takes.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from elma.bench.bootstrap import ratio_ci
from elma.data.features import WindowConfig, build_windows
from elma.data.squad import load_squad
from elma.errors import ElmaError
from elma.fsutil import Output, check_outputs, write_json
from elma.tokenization import pad_token_id
from elma.train.batching import collate, epoch_batches
from elma.train.device import Precision
from elma.train.distributed import DistEnv, wrap
from elma.train.loop import train_step
from elma.train.trainer import TrainConfig, _loss_fn, build_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF encoder folder, ELMA model folder or encoder config.json")
    p.add_argument("--tokenizer", help="default: the model's")
    p.add_argument("--data", required=True, help="SQuAD file to draw windows from")
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--examples", type=int, default=3000)
    p.add_argument("--steps", type=int, default=30, help="timed steps of each copy (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, kernel choice)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exit-weights", default="linear")
    p.add_argument("--no-answerability-head", dest="answerability_head", action="store_false")
    p.add_argument("--out", help="JSON report")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    try:
        check_outputs([Output(args.out, "--out")], args.overwrite, inputs=[args.data])
    except ElmaError as err:
        p.error(str(err))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainConfig(model=args.model, tokenizer=args.tokenizer, train_files=(args.data,), output_dir="-", bf16=True,
                      max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                      max_query_length=args.max_query_length,
                      exit_weights=args.exit_weights, answerability_head=args.answerability_head)
    model, tokenizer = build_model(cfg)
    model.train()
    windows = build_windows(load_squad(Path(args.data))[: args.examples], tokenizer,
                            WindowConfig(cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length))
    batches = epoch_batches([len(w) for w in windows], args.batch_size, seed=0, epoch=0)[: args.warmup + args.steps]
    if len(batches) < args.warmup + args.steps:
        sys.exit(f"train_compile: {len(batches)} batches in {args.examples} examples; ask for fewer steps")
    precision = Precision("cpu", torch.bfloat16)
    loss_fn = _loss_fn(cfg, slice(None), None, precision)
    copies = {}
    for name in ("eager", "compiled"):
        m = copy.deepcopy(model)
        module = wrap(m, DistEnv(), torch.device("cpu"))
        if name == "compiled":
            module = torch.compile(module, dynamic=True)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        copies[name] = (module, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), list(m.parameters()))
    times = {name: [] for name in copies}
    losses = {name: [] for name in copies}
    first_s = {}
    real = []
    pad = pad_token_id(tokenizer)
    for i, idx in enumerate(batches):
        batch = collate([windows[j] for j in idx], pad)
        step_s = {}
        for name in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            module, opt, sched, params = copies[name]
            torch.manual_seed(i)
            t0 = time.perf_counter()
            loss, _ = train_step(module, [(batch, 1.0)], loss_fn, opt, sched, precision, params, 1.0,
                                 torch.device("cpu"))
            dt = step_s[name] = time.perf_counter() - t0
            if i == 0:
                first_s[name] = dt
            if i >= args.warmup:
                times[name].append(dt)
                losses[name].append(loss.item())
        if i >= args.warmup:
            real.append(int(batch["attention_mask"].sum()))
        print(f"step {i}{' (warm-up)' if i < args.warmup else ''}: eager {step_s['eager']:.2f} s, compiled "
              f"{step_s['compiled']:.2f} s, {batch['input_ids'].shape[1]} tokens per window", file=sys.stderr)
    ci = ratio_ci(times["eager"], times["compiled"], reference="eager")  # paired over steps, as elma-bench over questions
    speedup, lo, hi = ci.ratio, ci.low, ci.high
    drift = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(losses["eager"], losses["compiled"]))
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": sys.version.split()[0], "args": vars(args),
              "timed_steps": args.steps, "first_step_s": first_s,
              "real_tokens_per_s": {k: sum(real) / sum(v) for k, v in times.items()},
              "compiled_speedup": speedup, "compiled_speedup_ci95": [lo, hi],
              "median_step_speedup": sorted(e / c for e, c in zip(times["eager"], times["compiled"]))[len(real) // 2],
              "step_s": times, "max_relative_loss_gap": drift, "final_loss": {k: v[-1] for k, v in losses.items()},
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"eager {report['real_tokens_per_s']['eager']:.0f} real tok/s, compiled "
          f"{report['real_tokens_per_s']['compiled']:.0f}: {speedup:.3f}x [{lo:.3f}, {hi:.3f}], median step "
          f"{report['median_step_speedup']:.3f}x; first step "
          f"{first_s['eager']:.1f} s eager, {first_s['compiled']:.1f} s compiled; loss gap up to {drift:.2%}")
    if args.out:
        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
