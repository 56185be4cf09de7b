"""Training throughput, side by side in one run: what dynamic padding, length grouping and bf16 buy, and the
step of the device/DDP-aware trainer (``elma.train.loop.train_step``) against the single-CPU step it replaced.

Each configuration trains the same model for the same number of steps on
batches drawn from the same windows; reported are real (unpadded) tokens per
second and the share of padded tokens. Ratios are taken against the first row
(every batch padded to max_seq_length, random order, fp32: the "before").

``--compare-loops`` then trains two copies of the model, one with ``legacy_step``
(the previous trainer's step, kept here verbatim) and one with ``train_step``,
alternating step by step on the same batches (interleaved, so that a busy
machine slows both alike), and checks that their weights stay bit-identical.

    python benchmarks/train_throughput.py --model MODEL_DIR --data TRAIN.json --steps 8 [--compare-loops] [--bf16]

Writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from elma.data.features import WindowConfig, build_windows
from elma.data.squad import load_squad
from elma.train.batching import collate, epoch_batches
from elma.train.losses import multi_exit_loss
from elma.train.trainer import TrainConfig, build_model


def legacy_step(model, batch, optimizer, scheduler, bf16: bool, max_grad_norm: float) -> float:
    """One step of the single-CPU trainer before devices and DDP (its loop body, defaults of its loss)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model.all_exits(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    parts = multi_exit_loss(logits.start.float(), logits.end.float(), batch["start_positions"], batch["end_positions"],
                            null=logits.null)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return parts.total.item()


def compare_loops(model, windows, lengths, pad_id, args) -> dict:
    """Old and new step, interleaved on the same batches from the same weights: tokens/s of each, and equality."""
    import copy

    from elma.train.device import Precision
    from elma.train.distributed import DistEnv, wrap
    from elma.train.loop import train_step

    def fresh(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    old_model, new_model = copy.deepcopy(model), copy.deepcopy(model)
    old_opt, old_sched = fresh(old_model)
    new_opt, new_sched = fresh(new_model)
    module = wrap(new_model, DistEnv(), torch.device("cpu"))
    precision = Precision("cpu", torch.bfloat16 if args.bf16 else None)

    def loss_fn(logits, batch):
        return multi_exit_loss(logits.start.float(), logits.end.float(), batch["start_positions"],
                               batch["end_positions"], null=logits.null)

    params = list(new_model.parameters())
    elapsed = {"old": 0.0, "new": 0.0}
    real = 0
    batches = epoch_batches(lengths, args.batch_size, seed=0, epoch=0)[: args.steps + 1]
    for i, idx in enumerate(batches):
        batch = collate([windows[j] for j in idx], pad_id)
        for name in (("old", "new") if i % 2 == 0 else ("new", "old")):  # alternate who goes first
            torch.manual_seed(i)  # the same dropout draws for both
            t0 = time.perf_counter()
            if name == "old":
                legacy_step(old_model, batch, old_opt, old_sched, args.bf16, 1.0)
            else:
                train_step(module, [(batch, 1.0)], loss_fn, new_opt, new_sched, precision, params, 1.0,
                           torch.device("cpu"))
            if i > 0:  # the first step warms the allocator and oneDNN's kernel choice
                elapsed[name] += time.perf_counter() - t0
        if i > 0:
            real += int(batch["attention_mask"].sum())
    a, b = old_model.state_dict(), new_model.state_dict()
    identical = all(torch.equal(a[k], b[k]) for k in a)
    return {"steps": len(batches) - 1, "old_real_tokens_per_s": real / elapsed["old"],
            "new_real_tokens_per_s": real / elapsed["new"], "new_over_old": elapsed["old"] / elapsed["new"],
            "bf16": args.bf16, "weights_bit_identical": identical}

MODES = [  # name, pad to max_seq_length, group by length, bf16
    ("pad-to-max, random order, fp32", True, False, False),
    ("dynamic padding, random order, fp32", False, False, False),
    ("dynamic padding, length-grouped, fp32", False, True, False),
    ("dynamic padding, length-grouped, bf16", False, True, True),
]


def run_mode(model, windows, lengths, pad_id, args, pad_to_max: bool, group: bool, bf16: bool) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = epoch_batches(lengths, args.batch_size, seed=0, epoch=0, group_by_length=group)[: args.steps + 1]
    real = padded = 0
    elapsed = 0.0
    for i, idx in enumerate(batches):
        batch = collate([windows[j] for j in idx], pad_id, pad_to=args.max_seq_length if pad_to_max else 0)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = multi_exit_loss(start.float(), end.float(), batch["start_positions"], batch["end_positions"]).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == 0:
            continue  # warm-up step: allocator and oneDNN kernel selection
        elapsed += time.perf_counter() - t0
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    return {"steps": len(batches) - 1, "wall_s": elapsed, "real_tokens_per_s": real / elapsed,
            "padded_share": 1 - real / padded}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF encoder folder, ELMA model folder or encoder config.json")
    p.add_argument("--tokenizer")
    p.add_argument("--data", required=True, help="SQuAD file to draw windows from")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compare-loops", action="store_true", help="old vs new trainer step, interleaved")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in --compare-loops")
    p.add_argument("--modes", default=",".join(str(i) for i in range(len(MODES))),
                   help="comma-separated rows of MODES to run (0-based; default: all)")
    p.add_argument("--out", help="JSON report")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(model=args.model, tokenizer=args.tokenizer, train_files=(args.data,), output_dir="-",
                      max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                      max_query_length=args.max_query_length)
    model, tokenizer = build_model(cfg)
    model.train()
    windows = build_windows(load_squad(Path(args.data))[: args.examples], tokenizer,
                            WindowConfig(cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length))
    lengths = [len(w) for w in windows]
    from elma.tokenization import pad_token_id

    rows = []
    for name, pad_to_max, group, bf16 in [MODES[int(i)] for i in args.modes.split(",")]:
        torch.manual_seed(0)
        row = {"mode": name, **run_mode(model, windows, lengths, pad_token_id(tokenizer), args, pad_to_max, group, bf16)}
        rows.append(row)
    base = rows[0]["real_tokens_per_s"]
    print(f"{'mode':42} {'real tok/s':>10} {'padded':>7} {'speed-up':>8}")
    for r in rows:
        r["speedup_vs_first"] = r["real_tokens_per_s"] / base
        print(f"{r['mode']:42} {r['real_tokens_per_s']:10.0f} {r['padded_share']:7.1%} {r['speedup_vs_first']:7.2f}x")
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": sys.version.split()[0], "args": vars(args), "rows": rows,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.compare_loops:
        loops = compare_loops(model, windows, lengths, pad_token_id(tokenizer), args)
        report["loops"] = loops
        print(f"old step {loops['old_real_tokens_per_s']:.0f} real tok/s, new step "
              f"{loops['new_real_tokens_per_s']:.0f} real tok/s: new/old {loops['new_over_old']:.3f}x; "
              f"weights bit-identical: {loops['weights_bit_identical']}")
    if args.out:
        from elma.fsutil import write_json

        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
