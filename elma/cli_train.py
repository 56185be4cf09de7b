"""The training side of the ``elma`` command: train, prepare-data, convert, snapshot, fit-null.

Parsers and handlers only, registered by ``elma.cli`` (its docstring has the error and exit-code rules); torch
and the training code are imported inside the handlers, so that building the parser stays cheap on a device.
"""

import json
import os
from pathlib import Path

from elma.cli_exit import UsageError, add_overwrite
from elma.fsutil import Output, check_outputs


def add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a multi-exit QA model (CPU, GPU, or several under torchrun)")
    p.add_argument("model", nargs="?",
                   help="HF encoder folder or model id, ELMA model folder, or encoder config.json (or in --config)")
    p.add_argument("--config", help="TOML recipe whose keys are the settings below; flags override it")
    p.add_argument("--train-file", nargs="+", help="SQuAD 1.1/2.0 JSON file(s)")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--eval-file", help="held-out SQuAD file: per-exit scores and null-threshold calibration")
    p.add_argument("--tokenizer", help="tokenizer.json, spiece.model or folder (default: the model's)")
    p.add_argument("--resume", action="store_true", help="continue from output-dir/checkpoint.pt")
    p.add_argument("--resume-weights", metavar="SNAPSHOT", help="continue this run from a weights-only snapshot "
                   "(`elma snapshot`) when its checkpoint.pt is lost: same settings, fresh optimizer moments")
    add_overwrite(p, "an earlier run's output folder")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--teacher", help="extractive-QA model (HF folder or id, or ELMA folder) every exit learns from")
    for flag, help_ in [("--two-stage", "freeze encoder and last head, train earlier heads"),
                        ("--bf16", "bfloat16 autocast (CPU or CUDA)"),
                        ("--fp16", "CUDA float16 autocast with a gradient scaler"),
                        ("--answerability-head", "new models: an answerability head per exit on the CLS state, "
                                                 "read by the null score"),
                        ("--freeze-word-embeddings", "keep the word-embedding matrix fixed")]:
        p.add_argument(flag, action="store_true", default=None, help=help_)  # None: not given, --config decides
    p.add_argument("--exit-weights", help="exits' loss weights: linear (default, l/sum l), uniform, or w1,...,wL")
    p.add_argument("--skim", metavar="SKIM", help="train with the runtime's token drop: skim:LAYER,THRESHOLD (stages "
                   "joined by +); after LAYER, context tokens its exit rules out are masked for the later layers")
    p.add_argument("--answerability-weight", type=float, help="weight of its binary loss (default 1)")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false", default=None)
    for name, typ in [("max-seq-length", int), ("doc-stride", int), ("max-query-length", int), ("batch-size", int),
                      ("learning-rate", float), ("weight-decay", float), ("warmup-ratio", float), ("epochs", float),
                      ("max-steps", int), ("max-grad-norm", float), ("distill-rate", float), ("temperature", float),
                      ("seed", int), ("save-every", int), ("log-every", int), ("max-examples", int),
                      ("eval-batch-size", int), ("threads", int), ("grad-accumulation", int),
                      ("dataloader-workers", int), ("teacher-weight", float)]:
        p.add_argument(f"--{name}", type=typ)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from dataclasses import fields

    from elma.train.recipe import read_recipe
    from elma.train.trainer import TrainConfig, train

    known = {f.name for f in fields(TrainConfig)}
    values = read_recipe(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    if args.train_file:
        values["train_files"] = tuple(args.train_file)
    missing = [flag for flag, key in (("MODEL", "model"), ("--train-file", "train_files")) if not values.get(key)]
    if missing:
        raise UsageError(f"{' and '.join(missing)} needed (on the command line or in --config)")
    try:
        config = TrainConfig(**values)
    except ValueError as err:
        raise UsageError(str(err)) from err
    result = train(config, resume=args.resume, overwrite=args.overwrite, resume_weights=args.resume_weights)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(json.dumps({"steps": result.steps, "final_loss": result.final_loss, "wall_s": round(result.wall_s, 1),
                      "tokens_per_s": round(result.tokens_per_s, 1), "output_dir": config.output_dir,
                      "eval": result.eval}, indent=2))
    return 0


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare-data", help="train/held-out split by article, with synthetic unanswerable twins")
    p.add_argument("files", nargs="+", help="SQuAD files; an article found twice is taken from the first")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--holdout-from", help="file whose articles may be held out (default: the first)")
    p.add_argument("--holdout-articles", type=int, default=0, help="articles of --holdout-from drawn at random")
    p.add_argument("--holdout-title", action="append", default=[], metavar="TITLE",
                   help="hold out this article (repeatable), e.g. one with real unanswerable questions")
    p.add_argument("--negative-rate", type=float, default=0.5, help="share of answerable questions given a twin")
    p.add_argument("--heldout-negative-rate", type=float,
                   help="the same on the held-out side (default: --negative-rate; 0 keeps it all real)")
    p.add_argument("--negative-recipes", default="drop,para", help="comma list of drop, para, swap, edit")
    p.add_argument("--repeat-real-negatives", type=int, default=1, metavar="K",
                   help="each real unanswerable training question appears K times")
    p.add_argument("--seed", type=int, default=13)
    add_overwrite(p, "an earlier prepare-data output folder")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from elma.data.prepare import SPLIT_JSON, prepare

    check_outputs([Output(args.output_dir, "-o", folder=True, what="a prepare-data output", replaces=(SPLIT_JSON,))],
                  args.overwrite, inputs=[*args.files, args.holdout_from])
    try:
        stats = prepare([Path(f) for f in args.files], Path(args.output_dir),
                        Path(args.holdout_from) if args.holdout_from else None,
                        args.holdout_articles, args.negative_rate, args.seed,
                        holdout_titles=args.holdout_title, heldout_negative_rate=args.heldout_negative_rate,
                        recipes=[r for r in args.negative_recipes.split(",") if r],
                        repeat_real=args.repeat_real_negatives, overwrite=args.overwrite)
    except ValueError as err:
        raise UsageError(str(err)) from err
    print(json.dumps(stats.__dict__, indent=2))
    return 0


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="re-save a model folder (e.g. as a compact fp16 checkpoint), or a training run's "
                       "checkpoint.pt as a model folder")
    p.add_argument("model", help="ELMA model folder, or a run's checkpoint.pt (the model of a run that is still going)")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    add_overwrite(p, "an ELMA model folder at -o")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    import torch

    from elma.fsutil import staged_dir
    from elma.model.loading import load_model
    from elma.model.multi_exit import CONFIG_NAME
    from elma.tokenization import save_tokenizer

    check_outputs([Output(args.output_dir, "-o", folder=True, what="an ELMA model folder", replaces=(CONFIG_NAME,))],
                  args.overwrite, inputs=[args.model])
    if Path(args.model).is_file():
        from elma.train.checkpoint import model_from_checkpoint

        model, tokenizer, step = model_from_checkpoint(Path(args.model))
        print(f"{args.model}: step {step}")
    else:
        model, tokenizer = load_model(args.model)
    out = Path(args.output_dir)
    with staged_dir(out, args.overwrite) as tmp:
        model.save_pretrained(tmp, dtype=getattr(torch, args.dtype))
        save_tokenizer(tokenizer, tmp)
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    print(f"wrote {out} ({args.dtype}, {size_mb:.1f} MB)")
    return 0


def add_snapshot(sub) -> None:
    p = sub.add_parser("snapshot", help="a training run's checkpoint.pt as a weights-only snapshot (fp16, step, "
                       "settings) small enough to commit; `elma train --resume-weights` continues from it")
    p.add_argument("checkpoint", help="a run's checkpoint.pt")
    p.add_argument("-o", "--output", required=True, help="the snapshot file to write")
    add_overwrite(p, "a snapshot at -o")
    p.set_defaults(func=cmd_snapshot)


def cmd_snapshot(args) -> int:
    from elma.train.checkpoint import save_snapshot

    check_outputs([Output(args.output, "-o")], args.overwrite, inputs=[args.checkpoint])
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"{args.checkpoint}: no such checkpoint")
    summary = save_snapshot(Path(args.checkpoint), Path(args.output), overwrite=args.overwrite)
    print(f"wrote {args.output} (step {summary['step']}, {summary['tensors']} tensors, "
          f"{summary['bytes'] / 1e6:.1f} MB)")
    return 0


def add_fit_null(sub) -> None:
    p = sub.add_parser("fit-null", help="refit a model folder's per-exit no-answer (null-score) thresholds on a "
                       "labelled file of held-out questions, e.g. real unanswerable ones; weights unchanged")
    p.add_argument("model", help="ELMA model folder (its config.json is rewritten)")
    p.add_argument("--data", required=True, help="SQuAD 2.0 file with answerable and unanswerable questions "
                   "(held-out articles; never the file you report on)")
    add_overwrite(p, "a calibrated default policy the folder holds (it is dropped: run `elma calibrate` again)")
    p.set_defaults(func=cmd_fit_null)


def cmd_fit_null(args) -> int:
    from elma.train.null_fit import refit_null_thresholds

    if not Path(args.data).is_file():
        raise UsageError(f"{args.data}: no such file")
    old, new, rows = refit_null_thresholds(Path(args.model), Path(args.data), overwrite=args.overwrite)
    print(f"{args.model}: null thresholds refitted on {args.data} ({rows[0]['total']} questions)")
    print("| exit | old threshold | new threshold | F1 | HasAns F1 | NoAns F1 |")
    print("|---|---|---|---|---|---|")
    for o, n, r in zip(old, new, rows):
        print(f"| {r['exit_layer']} | {o:.3f} | {n:.3f} | {r['f1']:.2f} | {r.get('HasAns_f1', float('nan')):.2f} | "
              f"{r.get('NoAns_f1', float('nan')):.2f} |")
    return 0
