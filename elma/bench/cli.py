"""``elma-bench``: benchmark a bundle or model folder on a SQuAD 2.0 file and write a report folder.

    elma-bench bundles/minilm --data dev-v2.0.json --policy entropy:0.4,0.4 --report-dir reports/minilm
    elma-bench bundles/minilm --data dev-v2.0.json --limit 500 --repeat 3 --sweep --report-dir reports/sweep

Exit codes: 0 done, 2 usage or input error (missing file, not SQuAD, no questions, bad policy, an output that
is already there without --overwrite; no report is written), 3 model or bundle error, or a report that cannot
be written. Errors are one line on stderr. Only the standard library is imported at module level, so
``elma-bench --help`` works without onnxruntime or torch.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from elma.cli_exit import EXIT_OK, UsageError, run_reported

PROG = "elma-bench"
BACKEND_CHOICES = ("onnxruntime", "tensorrt", "torch")
logger = logging.getLogger(PROG)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Benchmark an early-exit QA model on a SQuAD 2.0 file: official "
                                "metrics, exit histogram, latency, memory, baselines, policy sweep and roofline.",
                                epilog="Exit codes: 0 done, 2 usage or input error (no report written), 3 model error.")
    p.add_argument("model", metavar="MODEL_OR_BUNDLE", nargs="?", help="bundle folder, or an ELMA model folder (torch "
                   "backend); default: as elma-ask (MODELS_DIR/current when elma update installed one)")
    p.add_argument("--data", required=True, metavar="DATA.json", help="SQuAD 1.1/2.0 JSON with gold answers")
    p.add_argument("--policy", metavar="SPEC", help="exit policy (entropy:0.4,0.4, maxprob:0.9, patience:2, "
                   "similarity:bikl,0.05,2, static:3; none forces full depth); default: the model's calibrated "
                   "default policy (bundle manifest or model config.json), else none")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="default: onnxruntime for bundles, torch for model folders")
    p.add_argument("--limit", type=int, metavar="N", help="first N questions of the file")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="interleaved rounds over the questions (spread "
                   "of the policy's mean reported)")
    p.add_argument("--warmup", type=int, default=8, metavar="N", help="questions answered untimed by every "
                   "configuration first (default 8)")
    p.add_argument("--sweep", action="store_true", help="every policy over a parameter grid: Pareto front and plots")
    p.add_argument("--measure-front", action="store_true", help="with --sweep: time each distinct setting on the "
                   "Pareto front for real (interleaved with the rest), beside its simulated latency")
    p.add_argument("--sweep-skim", nargs="+", default=[], metavar="SKIM", help="with --sweep: also every policy "
                   "with these skim settings (skim:2,0.001 ...), one more recording pass each; the report and a third "
                   "plot add F1 vs mean token-layers")
    p.add_argument("--no-baselines", action="store_true", help="time the chosen policy alone: no chain, fused graph, "
                   "static:k, --compare, PyTorch eager or --hf-qa rows")
    p.add_argument("--compare", nargs="+", default=[], metavar="BUNDLE", help="other bundles of the model (e.g. its int8 "
                   "export): their fused graph and the chosen policy, timed interleaved with the rest")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples of the questions for "
                   "each ratio's 95%% interval (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--torch-model", metavar="DIR", help="ELMA model folder of the bundle, for the PyTorch eager baseline")
    p.add_argument("--hf-qa", metavar="DIR", help="a Hugging Face question-answering checkpoint folder, run through "
                   "AutoModelForQuestionAnswering as a further full-depth baseline")
    p.add_argument("--ffn-size", type=int, metavar="N", help="feed-forward width for the FLOPs count (default: "
                   "config.json, else 4 x hidden)")
    p.add_argument("--power-source", metavar="SOURCE", help="measure board energy of each timed pass with elma.power "
                   "(tegrastats, ina3221[:ROOT], jtop, keysight:RESOURCE[@CH], tegrastats-log:FILE, null, auto)")
    p.add_argument("--power-interval-ms", type=int, default=100, metavar="MS", help="power sampling period (default 100)")
    p.add_argument("--predictions-out", metavar="P.json", help="official-format predictions (id -> text)")
    p.add_argument("--na-probs-out", metavar="NA.json", help="official-format no-answer probabilities (id -> p)")
    p.add_argument("--report-dir", metavar="DIR", help="report folder (report.json, report.md, predictions, plots)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --report-dir (an earlier report), "
                   "--predictions-out or --na-probs-out, once the new one is complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def check_model_and_policy(model: str, policy: Optional[str]) -> None:
    """UsageError (exit 2) for a policy spec that does not parse or a model path that does not exist."""
    from elma.runtime.policies import parse_policy

    if policy is not None:
        try:
            parse_policy(policy)
        except ValueError as err:
            raise UsageError(f"--policy: {err}") from err
    if not Path(model).exists():
        raise UsageError(f"{model}: no such bundle or model folder")


def check_bench_outputs(args) -> None:
    """Refuse (exit 2), before any work, an output that is already there unless --overwrite."""
    from elma.fsutil import Output, check_outputs

    check_outputs([Output(args.report_dir, "--report-dir", folder=True, what="an elma-bench report",
                          replaces=("report.json",)),
                   Output(args.predictions_out, "--predictions-out"), Output(args.na_probs_out, "--na-probs-out")],
                  args.overwrite, inputs=[args.model, args.data])


def _config(args):
    from elma.bench.runner import BenchConfig

    if args.model is None:
        from elma.ask_cli import find_default_model

        args.model = str(find_default_model())
    check_model_and_policy(args.model, args.policy)
    check_bench_outputs(args)
    if args.torch_model is not None and not Path(args.torch_model, "config.json").is_file():
        raise UsageError(f"--torch-model {args.torch_model}: not an ELMA model folder (no config.json)")
    if args.measure_front and not args.sweep:
        raise UsageError("--measure-front times the points of a sweep: add --sweep")
    if args.sweep_skim and not args.sweep:
        raise UsageError("--sweep-skim adds skim settings to a sweep: add --sweep")
    for skim in args.sweep_skim:
        try:
            check_model_and_policy(args.model, f"none+{skim}")
        except UsageError as err:
            raise UsageError(f"--sweep-skim {skim}: {str(err)[len('--policy: '):]}") from err
    if args.hf_qa is not None and not Path(args.hf_qa, "config.json").is_file():
        raise UsageError(f"--hf-qa {args.hf_qa}: not a Hugging Face checkpoint folder (no config.json)")
    for other in args.compare:
        if not Path(other, "manifest.json").is_file():
            raise UsageError(f"--compare {other}: not a bundle folder (no manifest.json)")
    try:
        return BenchConfig(model=str(args.model), data=str(args.data), policy=args.policy, backend=args.backend,
                           limit=args.limit, repeat=args.repeat, warmup=args.warmup, sweep=args.sweep, measure_front=args.measure_front,
                           baselines=not args.no_baselines, torch_model=args.torch_model, hf_qa=args.hf_qa,
                           ffn_size=args.ffn_size, progress=not args.no_progress, power_source=args.power_source,
                           power_interval_ms=args.power_interval_ms, compare=tuple(args.compare),
                           bootstrap_resamples=args.bootstrap, seed=args.seed, sweep_skim=tuple(args.sweep_skim))
    except ValueError as err:
        raise UsageError(str(err)) from err


def summary_line(report) -> str:
    from elma.runtime.defaults import describe_policy

    r = report.result
    policy = describe_policy(report.policy, report.policy_source)
    return (f"{report.questions} questions, policy {policy}: EM {r.metrics['exact']:.2f} F1 {r.metrics['f1']:.2f}, "
            f"mean exit layer {r.mean_exit_layer:.2f}/{report.num_layers} (saving {100 * r.computation_saving:.1f}%), "
            f"latency mean {r.latency.mean_ms:.2f} ms p50 {r.latency.p50_ms:.2f} p90 {r.latency.p90_ms:.2f} "
            f"p99 {r.latency.p99_ms:.2f}, {r.throughput_qps:.2f} questions/s")


def run(args) -> int:
    from elma.bench.runner import load_examples, run_bench

    cfg = _config(args)
    examples = load_examples(cfg.data, cfg.limit)  # DataError (exit 2) before the model is loaded
    try:
        result = run_bench(cfg, examples, on_stage=lambda s: logger.info("%s", s))
    except ValueError as err:
        raise UsageError(str(err)) from err
    logger.info("writing the outputs")
    from elma.bench.report import write_report
    from elma.fsutil import write_json

    if args.predictions_out:
        write_json(Path(args.predictions_out), result.predictions, overwrite=args.overwrite)
    if args.na_probs_out:
        write_json(Path(args.na_probs_out), result.na_probs, overwrite=args.overwrite)
    if args.report_dir:  # last: a report folder means the run finished
        write_report(result, Path(args.report_dir), overwrite=args.overwrite)
    print(summary_line(result.report))
    if args.report_dir:
        print(f"report: {args.report_dir}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad usage
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reported(PROG, lambda: run(args), plain_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
