"""The ``elma`` command: train, prepare-data, predict, evaluate, convert, snapshot, fit-null, demo, export,
build-engines, calibrate, power, sync, finetune, keys, publish, update.

Library code logs and returns; only this module prints. Every error ends as one
line on stderr, never a traceback, with the exit codes of the other console
scripts (``elma.cli_exit``): 2 for bad arguments or input data (an output that
is already there included: every command checks its outputs before any work and
replaces one only with --overwrite, ``elma.fsutil.check_outputs``), 3 for a model,
bundle, engine, power source or offload server that cannot be used (or an
unexpected failure).
Heavy modules (torch, transformers) are imported inside the commands that need them.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from elma.cli_exit import UsageError, add_overwrite, run_reported
from elma.errors import BundleError, ModelLoadError
from elma.fsutil import Output, check_outputs

logger = logging.getLogger("elma")

DEMO_CONTEXT = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West Francia."
)
DEMO_QUESTION = "Who was the leader of the Norse raiders?"


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="official-format predictions of a model on a SQuAD file")
    p.add_argument("model", nargs="?", help="ELMA model folder (default: the shipped reference model)")
    p.add_argument("data", help="SQuAD JSON file")
    p.add_argument("-o", "--output", required=True, help="predictions JSON {id: answer}")
    p.add_argument("--na-probs-out", help="no-answer probabilities JSON {id: p}")
    p.add_argument("--exit-layer", type=int, help="answer from this exit (1-based; default: the last)")
    p.add_argument("--all-exits-out", help="per-exit official scores JSON (needs gold answers in DATA)")
    p.add_argument("--batch-size", type=int, default=64)
    add_overwrite(p, "an output file")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from elma.data.squad import load_squad
    from elma.fsutil import write_json
    from elma.model.loading import load_model
    from elma.predict import predict_all_exits, score_exits

    check_outputs([Output(args.output, "-o"), Output(args.na_probs_out, "--na-probs-out"),
                   Output(args.all_exits_out, "--all-exits-out")], args.overwrite, inputs=[args.data, args.model])
    examples = load_squad(Path(args.data), check_offsets=False)
    model, tokenizer = load_model(args.model)
    layer = args.exit_layer or model.num_exits
    if not 1 <= layer <= model.num_exits:
        raise UsageError(f"--exit-layer must be in 1..{model.num_exits} (got {layer})")
    results = predict_all_exits(model, tokenizer, examples, batch_size=args.batch_size, progress=True)
    chosen = results[layer - 1]
    write_json(Path(args.output), chosen.predictions(examples), args.overwrite)
    if args.na_probs_out:
        write_json(Path(args.na_probs_out), chosen.na_probs(examples), args.overwrite)
    if args.all_exits_out:
        write_json(Path(args.all_exits_out), {"data": args.data, "exits": score_exits(results, examples)}, args.overwrite)
    print(f"wrote {len(examples)} predictions of exit {layer} to {args.output}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="official SQuAD 2.0 metric")
    p.add_argument("data", help="SQuAD JSON file with gold answers")
    p.add_argument("predictions", help="predictions JSON {id: answer}")
    p.add_argument("--na-probs", help="no-answer probabilities JSON {id: p}")
    p.add_argument("--na-prob-thresh", type=float, default=1.0)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from elma.metrics.squad_v2 import evaluate_files

    scores = evaluate_files(args.data, args.predictions, args.na_probs, args.na_prob_thresh)
    print(json.dumps(scores, indent=2))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="ask a model one question and show the answer of every exit")
    p.add_argument("--model", help="ELMA model folder (default: the shipped reference model)")
    p.add_argument("--question", default=DEMO_QUESTION)
    p.add_argument("--context", default=DEMO_CONTEXT)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from elma.data.squad import Example
    from elma.model.loading import load_model
    from elma.predict import predict_all_exits

    if not args.question.strip() or not args.context.strip():
        raise UsageError("--question and --context must not be empty")
    model, tokenizer = load_model(args.model)
    ex = Example("demo", "", args.question, args.context, (), False)
    print(f"Q: {args.question}")
    for res in predict_all_exits(model, tokenizer, [ex]):
        a = res.answers[0]
        shown = a.prediction or "(no answer)"
        print(f"exit {res.exit_layer}: {shown!s:40}  span score {a.span_score:6.2f}  null diff {a.null_score_diff:6.2f}")
    print(_demo_policy_line(model, args))
    return 0


def _demo_policy_line(model, args) -> str:
    """Where the model's default policy (``elma.runtime.defaults``) stops on the demo question, and its answer."""
    from elma.paths import default_model_dir
    from elma.runtime.backends import TorchBackend
    from elma.runtime.defaults import describe_policy
    from elma.runtime.engine import Runtime, model_folder_info

    folder = Path(args.model) if args.model else default_model_dir()
    with Runtime(TorchBackend(folder, model=model), model_folder_info(folder)) as rt:
        a = rt.ask(args.question, args.context)
    shown = a.text or "(no answer)"
    return (f"policy {describe_policy(a.policy, a.policy_source)}: stops after exit {a.exit_layer} of {a.num_layers}: "
            f"{shown}")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a verified bundle: per-layer ONNX graphs, exit heads, fused graph")
    p.add_argument("model", nargs="?", help="ELMA model folder (default: the shipped reference model)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to create")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="weights: fp16 keeps normalisation and softmax in fp32; int8 = dynamic MatMul quantisation (CPU)")
    p.add_argument("--max-seq-length", type=int, help="longest window (default: the model's)")
    p.add_argument("--int8-keep-fp32", action="append", metavar="REGEX",
                   help="int8: MatMul nodes whose name matches stay float32 (repeatable; default: the feed-forward "
                   "output projection; '' quantises every weight MatMul)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset: 17 (native LayerNormalization) or 13 for TensorRT < 8.6")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript", help="torch.onnx exporter")
    add_overwrite(p, "a bundle at -o")
    p.add_argument("--threads", type=int, help="torch threads while exporting (default: torch's)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from elma.export.bundle_writer import export_bundle, export_summary
    from elma.export.specs import ExportConfig
    from elma.paths import default_model_dir

    try:
        config = ExportConfig(precision=args.precision, max_seq_length=args.max_seq_length, opset=args.opset,
                              exporter=args.exporter, overwrite=args.overwrite, threads=args.threads,
                              int8_keep_fp32=None if args.int8_keep_fp32 is None
                              else tuple(r for r in args.int8_keep_fp32 if r))
    except ValueError as err:
        raise UsageError(str(err)) from err
    model = Path(args.model) if args.model else default_model_dir()
    if not model.is_dir():
        raise ModelLoadError(f"{model}: no such model folder; pass one trained with `elma train`")
    print(export_summary(export_bundle(model, Path(args.output), config)))
    return 0


def _add_build_engines(sub) -> None:
    p = sub.add_parser("build-engines", help="build one TensorRT engine per graph of a bundle (needs tensorrt and a GPU)")
    p.add_argument("bundle", help="bundle folder written by `elma export`")
    p.add_argument("--fp16", action="store_true", help="allow fp16 kernels (normalisation layers stay fp32)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB", help="builder workspace limit in MiB")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept")
    add_overwrite(p, "the engines a bundle already has")
    p.set_defaults(func=cmd_build_engines)


def cmd_build_engines(args) -> int:
    from elma.export.tensorrt_build import EngineBuildConfig, build_engines, check_engines_target

    try:
        config = EngineBuildConfig(fp16=args.fp16, workspace_mb=args.workspace, max_batch=args.max_batch)
    except ValueError as err:
        raise UsageError(str(err)) from err
    check_engines_target(Path(args.bundle), args.overwrite)
    report = build_engines(Path(args.bundle), config)
    print(f"built {len(report.plans)} engines in {report.bundle} with TensorRT {report.tensorrt_version} for "
          f"{report.gpu_name} (compute capability {report.compute_capability}) in {report.wall_s:.1f} s")
    return 0


def _add_power(sub) -> None:
    p = sub.add_parser("power", help="power sources: sample one, print its energy, save the trace")
    power_sub = p.add_subparsers(dest="power_command")
    power_sub.required = True  # add_subparsers(required=) is 3.7+
    s = power_sub.add_parser("sample", help="sample a power source; print the measurement as JSON")
    s.add_argument("--source", default="auto", help="tegrastats | tegrastats-log:FILE | jtop | ina3221[:SYSFS_ROOT] | "
                   "keysight:VISA_RESOURCE[@CH[,CH]] | replay:FILE.csv | null | auto (default)")
    s.add_argument("--duration", type=float, help="seconds to sample (default: until a log/CSV ends, or Ctrl-C)")
    s.add_argument("--csv", help="write the samples and gaps here (replay them with --source replay:FILE)")
    s.add_argument("--interval-ms", type=int, help="sampling period, ms (default 100)")
    s.add_argument("--tegrastats-cmd", help="how to run tegrastats, e.g. 'sudo tegrastats' (default: tegrastats)")
    s.add_argument("--sysfs-root", help="sysfs mount for ina3221 (default /sys)")
    s.add_argument("--jtop-socket", help="jtop.service socket (default /run/jtop.sock)")
    s.add_argument("--visa-library", help="PyVISA backend: @py (default), '' for an installed VISA, FILE.yaml@sim")
    s.add_argument("--visa-timeout-ms", type=int, help="SCPI query timeout, ms (default 2000)")
    s.add_argument("--retry-s", type=float, help="wait between attempts to reopen a failed source, s (default 1)")
    s.add_argument("--max-samples", type=int, help="sample buffer bound (default 1000000)")
    s.add_argument("--realtime-replay", action="store_true", default=None, help="replay at the recorded pace")
    add_overwrite(s, "a --csv file")
    s.set_defaults(func=cmd_power_sample)


def cmd_power_sample(args) -> int:
    import shlex
    import time
    from dataclasses import asdict, fields

    from elma.power import PowerConfig, PowerSampler, measure, open_meter, write_trace_csv

    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be positive (got {args.duration})")
    check_outputs([Output(args.csv, "--csv")], args.overwrite)
    known = {f.name for f in fields(PowerConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    if args.tegrastats_cmd is not None:
        values["tegrastats_cmd"] = tuple(shlex.split(args.tegrastats_cmd))
    try:
        config = PowerConfig(**values)
        meter = open_meter(config)
        sampler = PowerSampler(meter, interval_s=config.interval_ms / 1000.0, max_samples=config.max_samples,
                               retry_s=config.retry_s)
    except ValueError as err:
        raise UsageError(str(err)) from err
    sampler.start()
    begin_s = sampler.clock()
    deadline_s = None if args.duration is None else sampler.clock() + args.duration
    try:
        while sampler.running and (deadline_s is None or sampler.clock() < deadline_s):
            time.sleep(0.05 if deadline_s is None else max(0.0, min(0.05, deadline_s - sampler.clock())))
    except KeyboardInterrupt:
        logger.info("interrupted: measuring what was sampled")
    end_s = sampler.clock()
    sampler.stop()
    trace = sampler.trace()
    if sampler.exhausted and trace.samples:  # a log or a CSV: its own clock, its whole span
        begin_s, end_s = trace.samples[0].timestamp_s, trace.samples[-1].timestamp_s
    result = measure(trace, "run", begin_s, end_s)
    if args.csv:
        write_trace_csv(Path(args.csv), trace, args.overwrite)
    report = {"source": meter.describe(), "samples": len(trace.samples), "dropped_samples": sampler.dropped_samples,
              "malformed_lines": getattr(meter, "malformed_lines", None), "measurement": asdict(result),
              "csv": args.csv}
    print(json.dumps(report, indent=2))
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="certify exit-policy settings on a calibration set (Learn then Test); store the "
                                         "default in the bundle")
    p.add_argument("bundle", help="bundle folder written by `elma export`")
    p.add_argument("--data", required=True, help="calibration SQuAD JSON (from training material, never the dev set); "
                                                 "answers may be left out with --risk consistency")
    p.add_argument("--risk", choices=["f1", "f1-mean", "consistency"], default="f1",
                   help="f1: mean F1 drop against full depth, no credit where an early answer is better (labelled "
                        "questions); f1-mean: full-depth F1 minus early F1, gains counted (labelled); consistency: "
                        "mean disagreement (100 - F1) with the full-depth answer, no labels needed (default: f1)")
    p.add_argument("--bound", choices=["hb", "wsr"],
                   help="the p-value: hb (Hoeffding-Bentkus, from the mean) or wsr (betting, adapts to the losses' "
                        "spread) (default: wsr for f1-mean, hb otherwise)")
    p.add_argument("--delta", type=float, metavar="D",
                   help="risk level in F1 points (0-100): certified mean loss <= D with probability >= 1 - epsilon")
    p.add_argument("--epsilon", type=float, default=0.1, metavar="E",
                   help="the guarantee may fail with probability at most E (default: 0.1)")
    p.add_argument("--max-f1-drop", type=float, metavar="D",
                   help="kept for old scripts: the same as --risk f1 --delta D")
    p.add_argument("--policies", default=",".join(("entropy", "maxprob", "patience", "similarity", "static")),
                   help="comma-separated policy names to calibrate (default: all)")
    p.add_argument("--default", help="policy name `elma-ask` uses by default (default: the certified setting with "
                                     "the fewest mean layers)")
    p.add_argument("--check-fraction", type=float, default=0.2,
                   help="share of the questions, by article, set aside to check the certified settings on (default: 0.2)")
    p.add_argument("--learn-fraction", type=float, default=0.25,
                   help="share of the other questions, by article, that build and order the grids; the rest gives "
                        "the p-values (default: 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by article (default: 0)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--skim-layers", default="", metavar="L1,L2",
                   help="skim grid: layers to skim after (with --skim-thresholds); every layer x threshold is one more "
                        "recording pass of the file, certified with the exit settings (default: no skimming)")
    p.add_argument("--skim-thresholds", default="", metavar="T1,T2",
                   help="skim grid: token probability thresholds, e.g. 0.001,0.01")
    p.add_argument("--model-dir", metavar="MODEL",
                   help="also store the certified default in this model folder's config.json (the folder the bundle "
                        "was exported from, same weights), so that `elma export`, elma-ask and the rest run it")
    p.add_argument("--dry-run", action="store_true", help="report, but leave the manifest (and --model-dir) as they are")
    add_overwrite(p, "a calibration the bundle (or --model-dir) already has")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from elma.data.squad import load_squad
    from elma.runtime.calibrate import skim_grid
    from elma.runtime.certify import (
        BOUND_NAMES,
        calibrate,
        check_calibration_target,
        check_model_target,
        write_calibration,
    )
    from elma.runtime.engine import Runtime, is_bundle

    if args.max_f1_drop is not None:
        if args.delta is not None or args.risk != "f1":
            raise UsageError("--max-f1-drop D is short for --risk f1 --delta D; give one or the other")
        args.delta = args.max_f1_drop
    if args.delta is None:
        raise UsageError("give the risk level: --delta D (F1 points), e.g. --risk f1 --delta 1 --epsilon 0.1")
    if not is_bundle(args.bundle):
        raise BundleError(f"{args.bundle}: not a bundle (no manifest.json); create one with `elma export MODEL -o BUNDLE`")
    if not args.dry_run:
        check_calibration_target(Path(args.bundle), args.overwrite)
        if args.model_dir:
            check_model_target(Path(args.bundle), Path(args.model_dir), args.overwrite)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        skim_layers = [int(x) for x in args.skim_layers.split(",") if x.strip()]
        skim_thresholds = [float(x) for x in args.skim_thresholds.split(",") if x.strip()]
        skim_grid(skim_layers, skim_thresholds)  # usage errors before the file is read
    except ValueError as err:
        raise UsageError(f"skim grid: {err}") from err
    examples = load_squad(Path(args.data), check_offsets=False, labels=False)  # the f1 risk checks its labels

    def on_pass(i: int, n: int, skim: str) -> None:
        logging.getLogger("elma.calibrate").info("recording pass %d/%d: %s", i, n, skim or "no skimming")

    try:
        with Runtime.open(args.bundle, backend=args.backend, policy="none") as rt:
            skims = skim_grid(skim_layers, skim_thresholds, rt.num_layers)
            report = calibrate(rt, examples, args.risk, args.delta, args.epsilon, policies, args.default,
                               args.check_fraction, args.learn_fraction, args.seed, skims, on_pass, args.bound)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not args.dry_run:
        write_calibration(Path(args.bundle), report, Path(args.data).name, args.backend,
                          Path(args.model_dir) if args.model_dir else None)
    full = "" if report.full_depth_f1 is None else f"full-depth F1 {report.full_depth_f1:.2f}, "
    print(f"risk {report.risk} <= {report.delta_points:g} points with probability >= {1 - report.epsilon:g} "
          f"({report.epsilon_per_policy:.3g} per policy, {BOUND_NAMES[report.bound]} p-values); "
          f"{report.questions} questions by {report.split_unit}: "
          f"{report.learn_questions} learn, {report.n} test, {report.check_questions} check; {full}"
          f"{report.num_layers} layers ({report.recording_passes} recording pass(es) in {report.record_s:.1f} s, "
          f"{report.grid_points} settings tested in {report.search_s:.1f} s)")
    if report.skim_grid:
        print(f"skim grid: {', '.join(report.skim_grid)}; settings compared by mean token-layers (full depth "
              f"{report.full_depth_token_layers:.0f} per question on the test part)")
    for name, c in report.policies.items():
        if c.spec is None:
            stop = "" if c.first_failure is None else f" (stopped at {c.first_failure}, p {c.first_failure_p:.3g})"
            print(f"{name:<10} no setting certified{stop}")
            continue
        f1 = "" if c.f1 is None else f"  F1 {c.f1:6.2f}"
        tl = f"  token-layers {c.mean_token_layers:.0f}" if report.skim_grid else ""
        line = (f"{name:<10} {c.spec:<32} mean layers {c.mean_layers:5.2f}{tl}  risk {c.risk_points:6.3f}  "
                f"p {c.p_value:.3g}  ({c.passed}/{c.settings} passed){f1}")
        if c.check is not None:
            check_f1 = "" if c.check.f1 is None else f", F1 {c.check.f1:.2f} (full {c.check.full_depth_f1:.2f})"
            check_tl = (f", token-layers {c.check.mean_token_layers:.0f} of {c.check.full_depth_token_layers:.0f}"
                        if report.skim_grid else "")
            line += (f"  | check: risk {c.check.risk_points:.3f}{'' if c.check.within_delta else ' ABOVE DELTA'}, "
                     f"{c.check.mean_layers:.2f} layers{check_tl}{check_f1}")
        print(line)
    where = "not written (--dry-run)" if args.dry_run else f"written to {Path(args.bundle) / 'manifest.json'}" + (
        f" and {Path(args.model_dir) / 'config.json'}" if args.model_dir else "")
    print(f"default policy: {report.default}; {where}")
    return 0


def _add_sync(sub) -> None:
    p = sub.add_parser("sync", help="upload the device's queued offload records to the server (exactly once)")
    p.add_argument("--server", required=True, help="server URL, e.g. http://10.0.0.2:8000")
    p.add_argument("--token-file", required=True, help="file holding this device's bearer token")
    p.add_argument("--upload", action="store_true", help="upload pending records (without it: only report the queue)")
    p.add_argument("--queue", help="queue database (default: $ELMA_OFFLOAD_QUEUE, else ~/.local/share/elma/offload.sqlite3)")
    p.add_argument("--batch-size", type=int, default=100, help="records per request")
    p.set_defaults(func=cmd_sync)


def cmd_sync(args) -> int:
    from elma.offload.client import OffloadClient, OffloadConfig, default_queue_path, read_token_file
    from elma.offload.queue import RecordQueue

    try:
        config = OffloadConfig(args.server, token=read_token_file(args.token_file), upload_batch_size=args.batch_size)
    except ValueError as err:
        raise UsageError(str(err)) from err
    with RecordQueue(Path(args.queue) if args.queue else default_queue_path()) as queue:
        if not args.upload:
            print(f"{queue.count(pending_only=True)} of {queue.count()} records pending in {queue.path} (pass --upload)")
            return 0
        report = OffloadClient(config, queue).upload_pending()
    print(f"uploaded {report.uploaded} records in {report.batches} batches ({report.stored_new} new on the server); "
          f"{report.pending_left} pending")
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train on the server's error records; publish only a model that is not worse")
    p.add_argument("--errors", required=True, help="SQLAlchemy URL of the record store (elma-serve --db)")
    p.add_argument("--base", required=True, help="ELMA model folder the server runs")
    p.add_argument("-o", "--output", required=True, help="new model folder (published only if not worse)")
    p.add_argument("--train-file", nargs="+", required=True, help="original SQuAD training file(s), mixed in")
    p.add_argument("--heldout", required=True, help="held-out SQuAD file both models are scored on")
    for name, typ in [("original-per-error", float), ("max-steps", int), ("batch-size", int), ("learning-rate", float),
                      ("min-f1-gain", float), ("seed", int), ("threads", int)]:
        p.add_argument(f"--{name}", type=typ)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from dataclasses import fields

    from elma.offload.finetune import FinetuneConfig, finetune

    known = {f.name for f in fields(FinetuneConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    try:
        config = FinetuneConfig(errors_db=args.errors, base_model=args.base, output_dir=args.output,
                                train_files=tuple(args.train_file), heldout_file=args.heldout, **values)
    except ValueError as err:
        raise UsageError(str(err)) from err
    r = finetune(config)
    print(f"{r.error_examples} error examples ({r.skipped_records} records skipped) + {r.original_examples} original, "
          f"{r.train_steps} steps; full-depth F1 on {args.heldout}: {r.base_f1:.2f} -> {r.new_f1:.2f}")
    if not r.published:
        print(f"not published: the new model is not better by {config.min_f1_gain:g} F1 points; candidate kept in "
              f"{r.candidate_dir}")
        return 1
    print(f"published {r.candidate_dir}")
    return 0


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check this board: Python, JetPack, onnxruntime, TensorRT, GPU, power sources, "
                                      "a bundle; exit 0 when the tensorrt backend can answer, 3 otherwise")
    p.add_argument("--bundle", help="bundle folder to verify (checksums, engines built for this TensorRT and GPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keysight", metavar="VISA_RESOURCE[@CH[,CH]]", help="also read a Keysight supply once")
    p.add_argument("--visa-library", default="@py", help="PyVISA backend (default @py)")
    p.add_argument("--tegrastats-cmd", default="tegrastats", help="how to run tegrastats, e.g. 'sudo tegrastats'")
    p.add_argument("--sysfs-root", default="/sys", help="sysfs mount holding the INA3221 rails")
    p.add_argument("--jtop-socket", default="/run/jtop.sock", help="jtop.service's socket")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    import shlex

    from elma.doctor import DoctorConfig, run_doctor

    try:
        config = DoctorConfig(bundle=args.bundle, keysight=args.keysight, visa_library=args.visa_library,
                              tegrastats_cmd=tuple(shlex.split(args.tegrastats_cmd)), sysfs_root=args.sysfs_root,
                              jtop_socket=args.jtop_socket)
    except ValueError as err:
        raise UsageError(str(err)) from err
    report = run_doctor(config)
    print(report.to_json() if args.json else report.to_text())
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elma", description="ELMA: early-exit question answering")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    sub.required = True  # add_subparsers(required=) is 3.7+
    from elma.cli_train import add_convert, add_fit_null, add_prepare, add_snapshot, add_train  # the training side

    for add in (add_train, add_prepare, _add_predict, _add_evaluate, add_convert, add_snapshot, add_fit_null, _add_demo,
                _add_export, _add_build_engines, _add_calibrate, _add_power, _add_sync, _add_finetune, _add_doctor):
        add(sub)
    from elma.update.cli import add_keys, add_publish, add_update  # signed model updates (docs/updates.md)

    for add in (add_keys, add_publish, add_update):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reported(f"elma {args.command}", lambda: args.func(args), plain_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
