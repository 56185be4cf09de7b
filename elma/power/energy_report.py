"""``elma-energy``'s report folder: energy.json, samples.csv, energy.md and power.png.

The folder is written under a temporary name beside the target and renamed into place once every file is
there (``elma.fsutil.publish_dir``, as ``elma-bench`` does), so a failed run leaves no partial report and an
earlier report is replaced only with ``overwrite`` (``elma-energy --overwrite``).
``samples.csv`` is the ``elma power trace v1`` CSV of ``elma.power.replay`` holding every sample and gap of
the measurement's span: ``--source replay:samples.csv`` replays it, and measuring the windows of
energy.json (their ``start_s``/``end_s``) on it gives the same figures.
"""

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

from elma.bench.report import _json_safe
from elma.fsutil import staged_dir
from elma.power.energy_figures import EnergyReport
from elma.power.energy_run import EnergyRun
from elma.power.integrate import PowerTrace
from elma.power.replay import trace_to_csv

logger = logging.getLogger(__name__)

ENERGY_JSON = "energy.json"
ENERGY_MD = "energy.md"
SAMPLES_CSV = "samples.csv"
POWER_PNG = "power.png"


def _fmt(value: Optional[float], spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    def row(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows), ""]


def markdown(report: EnergyReport) -> str:
    """The energy.md summary."""
    lines = [f"# elma-energy: {Path(report.model).name} on {Path(report.data).name}", "", "```sh", report.command, "```", "",
             f"Source {report.source}, sampling period {report.interval_ms} ms asked for, "
             f"{_fmt(report.median_sample_interval_ms, '.0f', 'unknown')} ms between samples (median); board total: "
             f"{report.total_rule or 'none (the rails define no total; see per-rail figures)'}"
             + (f" ({' + '.join(report.total_rails)})" if len(report.total_rails) > 1 else "") + ". "
             f"{report.samples} samples, {len(report.gaps)} gap(s). \"-\" marks a figure that was not measured.", "",
             "## Passes", ""]
    lines += _table(["pass", "policy", "questions", "mean exit layer", "F1", "energy mJ", "mJ/question (pass)",
                     "mJ/question mean", "mJ/question median", "mean mW", "peak mW", "coverage", "mean latency ms"],
                    [[p.name, f"`{p.policy}` ({p.policy_source or 'requested'})", p.questions, f"{p.mean_exit_layer:.2f}", f"{p.f1:.2f}",
                      _fmt(p.window.energy_mj, ".1f"), _fmt(p.energy_per_question_mj, ".2f"),
                      _fmt(p.question_energy_mean_mj, ".2f"), _fmt(p.question_energy_median_mj, ".2f"),
                      _fmt(p.window.mean_power_mw, ".0f"), _fmt(p.window.peak_power_mw, ".0f"),
                      _fmt(p.window.coverage, ".1%"), f"{p.mean_latency_ms:.2f}"] for p in report.passes])
    lines += [f"Saving from early exit, 1 - E_early / E_full over the pass windows: {_fmt(report.saving, '.1%', 'not measured')}"
              f"; over the mean question window: {_fmt(report.question_saving, '.1%', 'not measured')}. "
              "\"mJ/question (pass)\" is the pass energy over its questions (the loop between questions included); "
              "mean and median are over the question windows alone.", ""]
    if report.rails:
        lines += ["## Rails", ""]
        lines += _table(["pass", "rail", "energy mJ", "mean mW", "peak mW"],
                        [[p.name, r.rail, _fmt(r.energy_mj, ".1f"), _fmt(r.mean_power_mw, ".0f"), _fmt(r.peak_power_mw, ".0f")]
                         for p in report.passes for r in p.rails])
    lines += ["## Per-layer energy (estimate)", "", f"Method: {report.layer_energy_method}", ""]
    lines += _table(["layer", *(f"{p.name}: questions" for p in report.passes), *(f"{p.name}: mJ (estimate)" for p in report.passes),
                     *(f"{p.name}: mJ/question (estimate)" for p in report.passes)],
                    [[layer + 1, *(p.layers[layer].questions for p in report.passes),
                      *(_fmt(p.layers[layer].energy_estimate_mj, ".2f") for p in report.passes),
                      *(_fmt(p.layers[layer].mean_energy_estimate_mj, ".3f") for p in report.passes)]
                     for layer in range(report.num_layers)])
    if report.gaps:
        lines += ["## Gaps (source failures)", ""]
        lines += _table(["start s", "end s", "reason"],
                        [[f"{g.start_s:.3f}", _fmt(g.end_s, ".3f", "end of run"), g.reason] for g in report.gaps])
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    lines += ["## Files", "", f"- `{ENERGY_JSON}`: every figure, every window (start/end on the sampler's clock)",
              f"- `{SAMPLES_CSV}`: the raw samples and gaps; `--source replay:{SAMPLES_CSV}` replays them",
              f"- `{POWER_PNG}`: power over time, both passes, question boundaries, gaps shaded", ""]
    return "\n".join(lines)


def plot_power(report: EnergyReport, trace: PowerTrace, path: Path) -> None:
    """power.png: the board total (else each rail) over the measurement, passes shaded, question boundaries, gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = report.measurement.start_s
    fig, ax = plt.subplots(figsize=(11, 4.5))
    times = [s.timestamp_s - t0 for s in trace.samples]
    breaks = _gap_breaks(trace)
    series = [("board total", [s.total_power_mw for s in trace.samples], 1.4)]
    if all(v is None for v in series[0][1]):
        series = [(rail, [s.rail_power_mw.get(rail) for s in trace.samples], 1.0) for rail in trace.rails()]
    for label, values, width in series:
        xs, ys = [], []
        for i, (t, v) in enumerate(zip(times, values)):
            if i in breaks:  # no line across a gap: its power is unknown
                xs.append(float("nan"))
                ys.append(float("nan"))
            xs.append(t)
            ys.append(float("nan") if v is None else v)
        ax.plot(xs, ys, linewidth=width, label=label)
    colours = {"early": "tab:green", "full": "tab:orange"}
    for p in report.passes:
        ax.axvspan(p.window.start_s - t0, p.window.end_s - t0, color=colours.get(p.name, "tab:blue"), alpha=0.12,
                   label=f"{p.name} pass ({p.policy})")
        edges = sorted({q.window.start_s - t0 for q in p.question_windows} | {q.window.end_s - t0 for q in p.question_windows})
        ax.vlines(edges, 0, 1, transform=ax.get_xaxis_transform(), colors="0.55", linewidth=0.3, alpha=0.5)
    for i, gap in enumerate(report.gaps):
        end_s = report.measurement.end_s if gap.end_s is None else gap.end_s
        ax.axvspan(gap.start_s - t0, end_s - t0, facecolor="0.85", hatch="//", edgecolor="0.6", alpha=0.6,
                   label="gap (source down)" if i == 0 else None)
    if not trace.samples:
        ax.text(0.5, 0.5, "no power samples", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(0, max(report.measurement.duration_s, 1e-3))
    ax.set_ylim(bottom=0)  # from zero, so the two passes' power levels compare by eye
    ax.set_xlabel("time since the measurement started, s")
    ax.set_ylabel("power, mW")
    ax.set_title(f"{Path(report.model).name}: early exit vs full depth ({report.source})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gap_breaks(trace: PowerTrace) -> set:
    """Indices of samples that follow a gap (the line is broken before them)."""
    out = set()
    for i in range(1, len(trace.samples)):
        a, b = trace.samples[i - 1].timestamp_s, trace.samples[i].timestamp_s
        if any(g.overlaps(a, b) for g in trace.gaps):
            out.add(i)
    return out


def write_energy_report(report: EnergyReport, run: EnergyRun, target: Path, overwrite: bool = False) -> Path:
    """Write the report folder at ``target`` atomically (temporary folder, then rename). Returns ``target``.

    Raises:
        OutputExistsError: ``target`` is a non-empty folder and ``overwrite`` is not set.
    """
    target = Path(target)
    span = run.trace.window(run.started_s, run.stopped_s)  # every window lies inside: replaying it measures the same
    with staged_dir(target, overwrite) as tmp:
        try:
            plot_power(report, span, tmp / POWER_PNG)
        except ImportError:
            report.notes.append("power.png skipped: matplotlib is not installed (pip install 'elma[bench]')")
        (tmp / SAMPLES_CSV).write_text(trace_to_csv(span), encoding="utf-8")
        (tmp / ENERGY_JSON).write_text(json.dumps(_json_safe(asdict(report)), indent=2, ensure_ascii=False, allow_nan=False)
                                       + "\n", encoding="utf-8")
        (tmp / ENERGY_MD).write_text(markdown(report), encoding="utf-8")
    return target


def summary_lines(report: EnergyReport) -> List[str]:
    """What the CLI prints: one line per pass, the saving, then the notes."""
    from elma.runtime.defaults import describe_policy

    out = []
    for p in report.passes:
        policy = describe_policy(p.policy, p.policy_source)
        out.append(f"{p.name} pass, policy {policy}: {p.questions} questions, mean exit layer {p.mean_exit_layer:.2f}/"
                   f"{report.num_layers}, F1 {p.f1:.2f}, energy {_fmt(p.window.energy_mj, '.1f', 'not measured')} mJ "
                   f"({_fmt(p.energy_per_question_mj, '.2f', '-')} mJ/question), mean power "
                   f"{_fmt(p.window.mean_power_mw, '.0f', '-')} mW, coverage {_fmt(p.window.coverage, '.1%', '-')}")
    out.append(f"saving from early exit (1 - E_early/E_full): {_fmt(report.saving, '.1%', 'not measured')}; "
               f"{len(report.gaps)} gap(s); source {report.source}")
    out += [f"note: {n}" for n in report.notes]
    return out

