"""Training throughput, side by side in one run: what dynamic padding, length grouping and bf16 buy.

Each configuration trains the same model for the same number of steps on
batches drawn from the same windows; reported are real (unpadded) tokens per
second and the share of padded tokens. Ratios are taken against the first row
(every batch padded to max_seq_length, random order, fp32: the "before").

    python benchmarks/train_throughput.py --model MODEL_DIR --data TRAIN.json --steps 8

Writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from elma.data.features import WindowConfig, build_windows
from elma.data.squad import load_squad
from elma.train.batching import collate, epoch_batches
from elma.train.losses import multi_exit_loss
from elma.train.trainer import TrainConfig, build_model

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
    for name, pad_to_max, group, bf16 in MODES:
        torch.manual_seed(0)
        row = {"mode": name, **run_mode(model, windows, lengths, pad_token_id(tokenizer), args, pad_to_max, group, bf16)}
        rows.append(row)
    base = rows[0]["real_tokens_per_s"]
    print(f"{'mode':42} {'real tok/s':>10} {'padded':>7} {'speed-up':>8}")
    for r in rows:
        r["speedup_vs_first"] = r["real_tokens_per_s"] / base
        print(f"{r['mode']:42} {r['real_tokens_per_s']:10.0f} {r['padded_share']:7.1%} {r['speedup_vs_first']:7.2f}x")
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": sys.version.split()[0], "args": vars(args), "rows": rows}
    if args.out:
        from elma.fsutil import write_json

        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
