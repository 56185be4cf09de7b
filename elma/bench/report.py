"""The report folder: report.json, report.md, predictions, no-answer probabilities and (with a sweep) plots.

The folder is written under a temporary name beside the target and renamed into place once every file is
there, so a failed run leaves no partial report; an existing report at the target is replaced only with
``overwrite`` (``elma-bench --overwrite``), and only once the new one is complete.
"""

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Sequence

from elma.bench.results import BenchReport, BenchRun, ConfigResult, SweepPoint
from elma.fsutil import staged_dir

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS = "predictions.json"
NA_PROBS = "na_probs.json"
PLOT_LAYERS = "pareto_f1_vs_layers.png"
PLOT_LATENCY = "pareto_f1_vs_latency.png"
PLOT_TOKENS = "pareto_f1_vs_token_layers.png"


def _json_safe(obj):
    """Infinities and NaN become null (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows), ""]


def _config_rows(configs: Sequence[ConfigResult]) -> List[List[object]]:
    return [[c.name, c.latency_source, f"{c.metrics['exact']:.2f}", f"{c.metrics['f1']:.2f}", f"{c.mean_exit_layer:.2f}",
             f"{100 * c.computation_saving:.1f}%", f"{c.latency.mean_ms:.2f}", f"{c.latency.p50_ms:.2f}",
             f"{c.latency.p90_ms:.2f}", f"{c.latency.p99_ms:.2f}", f"{c.throughput_qps:.2f}"] for c in configs]


CONFIG_HEADER = ["configuration", "latency", "EM", "F1", "mean exit layer", "saving", "mean ms", "p50 ms", "p90 ms",
                 "p99 ms", "questions/s"]


def _ratio(c: ConfigResult, i: int) -> str:
    if len(c.ratios) <= i:
        return "-"
    r = c.ratios[i]
    return f"{r.ratio:.2f}x [{r.low:.2f}, {r.high:.2f}]"


def _metric(c: ConfigResult, key: str) -> str:
    return f"{c.metrics[key]:.1f}" if key in c.metrics else "-"


def side_by_side(report: BenchReport) -> List[str]:
    """The table of every configuration against the fused graph (the issue's table), with 95% intervals."""
    configs = [report.result, *report.baselines]
    refs = [r.reference for r in report.result.ratios] or ["-"]
    header = ["configuration", "latency", "mean ms", f"vs {refs[0]} [95% CI]"]
    if len(refs) > 1:
        header.append(f"vs {refs[1]} [95% CI]")
    header += ["F1", "EM", "HasAns F1", "NoAns F1", "mean layers", "token-layers", "tokens/layer"]
    rows = []
    for c in configs:
        row = [c.name, c.latency_source, f"{c.latency.mean_ms:.2f}", _ratio(c, 0)]
        if len(refs) > 1:
            row.append(_ratio(c, 1))
        row += [_metric(c, "f1"), _metric(c, "exact"), _metric(c, "HasAns_f1"), _metric(c, "NoAns_f1"),
                f"{c.mean_exit_layer:.2f}", f"{c.mean_token_layers:.0f}" if c.mean_token_layers else "-",
                f"{c.mean_tokens_per_layer:.1f}" if c.mean_tokens_per_layer else "-"]
        rows.append(row)
    resamples = report.result.ratios[0].resamples if report.result.ratios else 0
    intro = ("Measured rows were timed interleaved: for each question every configuration answered it back to back, "
             "the order changing per question along a balanced Latin square (each configuration first, and right after each "
             "other, equally often), batch 1, tokenisation to decoded answer. A ratio is the "
             "reference's mean latency over the row's (above 1: faster), with the paired bootstrap 95% interval over "
             f"questions ({resamples} resamples). \"simulated\" rows are not timed: their latency is the measured "
             "every-exit chain's step times summed up to the simulated exit layer (elma/bench/sweep.py). "
             "token-layers: tokens times layers run per question, over its windows (what early exit and skimming "
             "save); tokens/layer: per question, token-layers over its exit layer.")
    return ["## Side by side", "", intro, "", *_table(header, rows)]


def _mib(value) -> str:
    return "unknown" if value is None else f"{value:.0f} MiB"


def markdown(report: BenchReport) -> str:
    r = report.result
    lines = [f"# elma-bench: {Path(str(report.settings['model'])).name} on {Path(str(report.settings['data'])).name}", "",
             f"{report.questions} questions ({report.windows} windows), {report.num_layers} layers, backend "
             f"{report.backend}, policy `{report.policy}` ({report.policy_source or 'requested'}); "
             f"model load {report.model_load_ms:.0f} ms; peak resident "
             f"memory {_mib(report.peak_rss_mb)} after the timed rounds, {_mib(report.peak_rss_end_mb)} at the end of "
             f"the run (ru_maxrss).", ""]
    if report.result.ratios or report.baselines:
        lines += side_by_side(report)
    lines += ["## Official SQuAD 2.0 metrics (chosen policy)", ""]
    lines += _table(["metric", "value"], [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in r.metrics.items()])
    lines += ["## Exits", "", f"Mean exit layer {r.mean_exit_layer:.3f} of {report.num_layers}; expected computation "
              f"saving {100 * r.computation_saving:.1f}% (1 - mean layers / L); unsolved {100 * r.unsolved_rate:.1f}%.", ""]
    lines += _table(["exit layer", "questions"], [[i + 1, n] for i, n in enumerate(r.exit_histogram)])
    rep = report.repeats
    lines += ["## Latency and repeats", "", f"{rep.repeats} interleaved round(s) at batch 1; the chosen policy's mean "
              "latency per round (ms): "
              f"min {rep.min_mean_latency_ms:.2f}, median {rep.median_mean_latency_ms:.2f}, max {rep.max_mean_latency_ms:.2f}; "
              f"metrics identical across rounds: {'yes' if rep.metrics_identical else 'NO'}.", ""]
    lines += _table(CONFIG_HEADER, _config_rows([r]))
    if report.peak_rss_stages_mb:
        lines += ["## Memory", "", f"Peak resident memory (ru_maxrss) after each stage; the sweep's record of every exit "
                  f"holds {report.sweep_record_bytes / 1e6:.2f} MB.", ""]
        lines += _table(["after", "peak MiB"], [[k, _mib(v)] for k, v in report.peak_rss_stages_mb.items()])
    if report.baselines:
        lines += ["## Baselines", "", "\"simulated\" latency: measured non-layer time plus measured per-layer step times "
                  "of the every-exit chain, up to the simulated exit layer (see elma/bench/sweep.py).", ""]
        lines += _table(CONFIG_HEADER, _config_rows(report.baselines))
    if report.sweep:
        front = sorted((p for p in report.sweep if p.pareto_layers), key=lambda p: (p.mean_layers, -p.f1))
        same: Dict[tuple, List[SweepPoint]] = {}  # settings with the same (mean layers, F1): one row, the others counted
        for p in front:
            same.setdefault((p.mean_layers, p.f1), []).append(p)
        lines += ["## Sweep: Pareto front (F1 vs mean exit layer)", "",
                  f"{len(report.sweep)} settings simulated on recorded logits; {len(front)} on the front (settings with "
                  f"equal mean layers and F1 share a row). Latency simulated; every point is in report.json.", ""]
        lines += _table(["policy", "F1", "EM", "mean layers", "token-layers", "mean ms (simulated)", "mean ms (measured)",
                         "unsolved", "equivalent settings"],
                        [[f"`{p.spec}`", f"{p.f1:.2f}", f"{p.exact:.2f}", f"{p.mean_layers:.2f}", f"{p.mean_token_layers:.0f}",
                          f"{p.mean_latency_ms:.2f}", "-" if p.measured_latency_ms is None else f"{p.measured_latency_ms:.2f}",
                          f"{100 * p.unsolved_rate:.1f}%", len(group) - 1] for group in same.values() for p in group[:1]])
        if any(p.skim for p in report.sweep):
            tfront = sorted((p for p in report.sweep if p.pareto_token_layers), key=lambda p: (p.mean_token_layers, -p.f1))
            lines += ["## Sweep: Pareto front (F1 vs mean token-layers, skim settings included)", "",
                      "Skimming runs fewer tokens in the same layers; a skimmed setting's simulated latency scales the "
                      "chain's step times by the tokens each layer ran (an estimate; --measure-front times it).", ""]
            lines += _table(["policy", "F1", "mean layers", "token-layers", "mean ms (simulated)", "mean ms (measured)"],
                            [[f"`{p.spec}`", f"{p.f1:.2f}", f"{p.mean_layers:.2f}", f"{p.mean_token_layers:.0f}",
                              f"{p.mean_latency_ms:.2f}",
                              "-" if p.measured_latency_ms is None else f"{p.measured_latency_ms:.2f}"] for p in tfront])
    if report.roofline:
        roof = report.roofline
        lines += ["## Roofline", "", f"Measured float32 matmul peak {roof.peak.gflops_per_s:.1f} GFLOP/s "
                  f"({roof.peak.n}x{roof.peak.n}, best of {roof.peak.repeats}); hidden {roof.hidden_size}, FFN "
                  f"{roof.ffn_size} ({roof.ffn_size_source}); mean window {roof.mean_window_tokens:.1f} tokens. "
                  "FLOPs per layer = 8TH^2 + 4T^2H + 4THF + 4TH (elma/bench/roofline.py).", ""]
        lines += _table(["configuration", "GFLOP/question", "bound ms", "mean ms", "x bound"],
                        [[x.name, f"{x.mean_gflops_per_question:.4f}", f"{x.latency_bound_ms:.3f}", f"{x.mean_latency_ms:.2f}",
                          f"{x.distance_x:.1f}"] for x in roof.rows])
    if report.energy:
        e = report.energy

        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        lines += ["## Energy (timed passes)", "", f"Source {e.source}, sampled every {e.interval_ms} ms; one measurement "
                  "window per timed pass (an interleaved round: every configuration of the round together; per "
                  "answer = over questions x configurations) (elma.power).", ""]
        lines += _table(["pass", "energy per answer mJ", "mean power mW", "coverage"],
                        [[i + 1, fmt(q, ".2f"), fmt(p, ".0f"), fmt(w.coverage, ".0%")]
                         for i, (q, p, w) in enumerate(zip(e.energy_per_question_mj, e.mean_power_mw, e.windows))])
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    lines += ["## Machine", "", *(f"- {k}: {v}" for k, v in {**report.machine, **report.versions}.items()), ""]
    return "\n".join(lines)


def plot_sweep(points: Sequence[SweepPoint], folder: Path) -> List[str]:
    """F1 vs mean layers and F1 vs simulated latency, one line per policy, front marked. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = [(PLOT_LAYERS, "mean_layers", "pareto_layers", "mean exit layer"),
             (PLOT_LATENCY, "mean_latency_ms", "pareto_latency", "mean latency, ms (simulated)")]
    if any(p.skim for p in points):
        plots.append((PLOT_TOKENS, "mean_token_layers", "pareto_token_layers", "mean token-layers per question"))
    for fname, key, front_key, xlabel in plots:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_policy: Dict[str, List[SweepPoint]] = {}
        for p in points:
            by_policy.setdefault(p.policy, []).append(p)
        for name, pts in by_policy.items():
            pts = sorted(pts, key=lambda p: getattr(p, key))
            ax.plot([getattr(p, key) for p in pts], [p.f1 for p in pts], marker=".", linewidth=1, label=name)
        front = sorted((p for p in points if getattr(p, front_key)), key=lambda p: getattr(p, key))
        ax.plot([getattr(p, key) for p in front], [p.f1 for p in front], "k--", linewidth=1, label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("F1 (SQuAD 2.0)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def write_report(run: BenchRun, target: Path, overwrite: bool = False) -> Path:
    """Write the report folder at ``target`` atomically (temporary folder, then rename). Returns ``target``.

    Raises:
        OutputExistsError: ``target`` is a non-empty folder and ``overwrite`` is not set.
    """
    target = Path(target)
    with staged_dir(target, overwrite) as tmp:
        report = run.report
        if report.sweep:
            try:
                plot_sweep(report.sweep, tmp)
            except ImportError:
                report.notes.append("plots skipped: matplotlib is not installed (pip install 'elma[bench]')")
        (tmp / PREDICTIONS).write_text(json.dumps(run.predictions, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / NA_PROBS).write_text(json.dumps(run.na_probs, indent=1) + "\n", encoding="utf-8")
        (tmp / REPORT_JSON).write_text(json.dumps(_json_safe(report.to_dict()), indent=2, ensure_ascii=False, allow_nan=False)
                                       + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(markdown(report), encoding="utf-8")
    return target

