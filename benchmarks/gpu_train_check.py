"""GPU training check: train a recipe for N steps on a CUDA GPU; print samples per second and peak GPU memory.

    python benchmarks/gpu_train_check.py [--recipe recipes/reference-minilm-l6.toml] [--steps 50]
        [--model M] [--data TRAIN.json] [--precision bf16|fp16|fp32] [--batch-size B] [--out REPORT.json]

The recipe's settings are used as they are (window geometry, batch, learning rate), with ``--model`` and
``--data`` overriding its paths on a machine that keeps them elsewhere. The first ``--warmup`` steps (CUDA
context, cuDNN/cuBLAS autotuning, allocator growth) are left out of the rate. Without a CUDA GPU it says so
and exits 3, having written nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

EXIT_NO_GPU = 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes" / "reference-minilm-l6.toml"))
    p.add_argument("--steps", type=int, default=50, help="optimiser steps timed (after --warmup)")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not timed")
    p.add_argument("--model", help="override the recipe's model (folder or id)")
    p.add_argument("--data", help="override the recipe's training file")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--out", help="JSON report")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    from elma.errors import ElmaError
    from elma.fsutil import Output, check_outputs, write_json

    try:  # before the GPU check and the training: a taken --out is refused first
        check_outputs([Output(args.out, "--out")], args.overwrite, inputs=[args.data, args.recipe])
    except ElmaError as err:
        p.error(str(err))

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_train_check: no CUDA GPU here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); run it on a machine with one", file=sys.stderr)
        return EXIT_NO_GPU

    from elma.train.recipe import read_recipe
    from elma.train.trainer import TrainConfig, train

    values = read_recipe(args.recipe)
    values.pop("eval_file", None)  # a throughput check: no evaluation
    if args.model:
        values["model"] = args.model
    if args.data:
        values["train_files"] = (args.data,)
    if args.batch_size:
        values["batch_size"] = args.batch_size
    values.update(bf16=args.precision == "bf16", fp16=args.precision == "fp16", device="cuda")
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-train-check-") as tmp:
            for name, steps in (("warmup", args.warmup), ("timed", args.warmup + args.steps)):
                config = TrainConfig(**{**values, "output_dir": str(Path(tmp) / name), "max_steps": steps,
                                        "save_every": 10 ** 9, "log_every": max(1, steps // 5)})
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                result = train(config)
                torch.cuda.synchronize()
                rows.append({"run": name, "steps": result.steps, "wall_s": time.perf_counter() - t0,
                             "train_wall_s": result.wall_s, "tokens_per_s": result.tokens_per_s,
                             "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20})
    except ElmaError as err:
        print(f"gpu_train_check: error: {err}", file=sys.stderr)
        return 2
    warm, timed = rows
    # the timed run starts with as many steps as the warm-up run made; their time is taken off
    timed_s = timed["train_wall_s"] - warm["train_wall_s"]
    samples_per_s = args.steps * config.batch_size / max(timed_s, 1e-9)
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "recipe": args.recipe, "model": config.model, "precision": args.precision,
              "batch_size": config.batch_size, "max_seq_length": config.max_seq_length, "steps": args.steps,
              "samples_per_s": samples_per_s, "real_tokens_per_s": timed["tokens_per_s"],
              "peak_gpu_mb": timed["peak_gpu_mb"], "runs": rows}
    print(f"{report['gpu']}: {samples_per_s:.1f} samples/s ({args.precision}, batch {config.batch_size}, "
          f"{config.max_seq_length} tokens), peak GPU memory {report['peak_gpu_mb']:.0f} MiB")
    if args.out:
        write_json(args.out, report, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
