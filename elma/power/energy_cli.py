"""``elma-energy``: energy per question with and without early exit, under one power sampler.

    elma-energy bundles/minilm --data dev-v2.0.json --source tegrastats --limit 200 --report-dir reports/energy
    elma-energy bundles/minilm --data dev-v2.0.json --source keysight:TCPIP0::192.168.1.5::5025::SOCKET@1

The power source is opened first; then the benchmark runner runs the early-exit pass (``--policy`` or the
model's calibrated default policy) and the full-depth pass (policy ``none``), one window per pass and per question
(``elma.power.energy_run``). The report folder holds energy.json, samples.csv, energy.md and power.png.

Exit codes, as ``elma-bench``'s: 0 done; 2 usage or input error (bad source specification, missing file, not
SQuAD, bad policy, a --report-dir already there without --overwrite); 3 model error, a power source that
cannot be opened (one line saying which source was looked for), or a report that cannot be written. No report
is written on an error. Only the standard library
is imported at module level, so ``elma-energy --help`` works without onnxruntime, torch or matplotlib.
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from elma.cli_exit import EXIT_OK, UsageError, run_reported

PROG = "elma-energy"
BACKEND_CHOICES = ("onnxruntime", "tensorrt", "torch")
SOURCE_HELP = ("tegrastats | tegrastats-log:FILE | jtop | ina3221[:SYSFS_ROOT] | keysight:VISA_RESOURCE[@CH[,CH]] | "
               "replay:FILE.csv | null | auto")
logger = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Energy per question of an early-exit QA model with and without "
                                "early exit: two benchmark passes under one power sampler, a window per pass and per "
                                "question, per-rail figures, a per-layer estimate and the saving.",
                                epilog="Exit codes: 0 done, 2 usage or input error, 3 model error or no power source "
                                "(no report is written on an error).")
    p.add_argument("model", metavar="MODEL_OR_BUNDLE", help="bundle folder, or an ELMA model folder (torch backend)")
    p.add_argument("--data", required=True, metavar="DATA.json", help="SQuAD 1.1/2.0 JSON")
    p.add_argument("--source", required=True, metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("--policy", metavar="SPEC", help="early-exit pass policy (entropy:0.4,0.4, maxprob:0.9, ...); "
                   "default: the model's calibrated default policy. The other pass always runs at full depth (none)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="default: onnxruntime for bundles, torch for model folders")
    p.add_argument("--limit", type=int, metavar="N", help="first N questions of the file")
    p.add_argument("--warmup", type=int, default=8, metavar="N", help="questions answered untimed before each pass (default 8)")
    p.add_argument("--report-dir", metavar="DIR", help="report folder (energy.json, samples.csv, energy.md, power.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --report-dir (an earlier energy "
                   "report) once the new one is complete")
    p.add_argument("--interval-ms", type=int, default=100, metavar="MS", help="sampling period, ms (default 100)")
    p.add_argument("--tegrastats-cmd", metavar="CMD", help="how to run tegrastats, e.g. 'sudo tegrastats' (default: tegrastats)")
    p.add_argument("--sysfs-root", metavar="DIR", help="sysfs mount for ina3221 and auto (default /sys)")
    p.add_argument("--jtop-socket", metavar="PATH", help="jtop.service socket (default /run/jtop.sock)")
    p.add_argument("--visa-library", metavar="LIB", help="PyVISA backend: @py (default), '' for an installed VISA, FILE.yaml@sim")
    p.add_argument("--visa-timeout-ms", type=int, metavar="MS", help="SCPI query timeout, ms (default 2000)")
    p.add_argument("--retry-s", type=float, metavar="S", help="wait between attempts to reopen a failed source, s (default 1)")
    p.add_argument("--realtime-replay", action="store_true", help="replay:FILE.csv at its recorded pace, re-stamped from now "
                   "(without it the recorded timestamps are kept: they must be on this machine's monotonic clock)")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr (its redraws fall inside the pass windows)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _config(args):
    from elma.bench.cli import check_model_and_policy
    from elma.fsutil import Output, check_outputs
    from elma.power.energy_run import EnergyConfig
    from elma.power.sources import PowerConfig

    check_model_and_policy(args.model, args.policy)
    check_outputs([Output(args.report_dir, "--report-dir", folder=True, what="an elma-energy report",
                          replaces=("energy.json",))], args.overwrite, inputs=[args.model, args.data])
    power = {"source": args.source, "interval_ms": args.interval_ms, "realtime_replay": args.realtime_replay}
    for name in ("sysfs_root", "jtop_socket", "visa_library", "visa_timeout_ms", "retry_s"):
        if getattr(args, name) is not None:
            power[name] = getattr(args, name)
    if args.tegrastats_cmd is not None:
        power["tegrastats_cmd"] = tuple(shlex.split(args.tegrastats_cmd))
        if not power["tegrastats_cmd"]:
            raise UsageError("--tegrastats-cmd must name a command")
    try:
        return EnergyConfig(model=str(args.model), data=str(args.data), power=PowerConfig(**power), policy=args.policy,
                            backend=args.backend, limit=args.limit, warmup=args.warmup, progress=args.progress)
    except ValueError as err:
        raise UsageError(str(err)) from err


def run(args, command: str) -> int:
    from elma.bench.runner import load_examples
    from elma.errors import PowerMeterUnavailable
    from elma.power.energy_figures import build_report
    from elma.power.energy_run import run_energy

    cfg = _config(args)
    examples = load_examples(cfg.data, cfg.limit)  # DataError (exit 2) before the source is opened
    try:
        result = run_energy(cfg, examples, on_stage=lambda s: logger.info("%s", s))
    except PowerMeterUnavailable as err:  # one line, naming the source that was looked for
        raise PowerMeterUnavailable(f"no power source could be opened (--source {cfg.power.source}): "
                                    + " ".join(str(err).split())) from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    report = build_report(result, command)
    if args.report_dir:
        from elma.power.energy_report import write_energy_report

        write_energy_report(report, result, Path(args.report_dir), overwrite=args.overwrite)
    from elma.power.energy_report import summary_lines

    for line in summary_lines(report):
        print(line)
    if args.report_dir:
        print(f"report: {args.report_dir}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad usage
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    return run_reported(PROG, lambda: run(args, command), plain_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
