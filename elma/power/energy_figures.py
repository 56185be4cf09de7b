"""``elma-energy``'s figures: every window of an ``EnergyRun`` measured from the whole trace.

Every window is measured once sampling has stopped, so each window's edges are interpolated from the
samples on both sides:

* **pass windows** (``early``, ``full``): the ``pass-1`` window ``run_bench`` opens around its timed pass;
* **question windows** (``early/q1``, ...): from ``QuestionResult.start_s``/``end_s``, clock readings around
  each ``Runtime.ask`` call, on the sampler's clock. They lie inside their pass window and do not overlap,
  so with power >= 0 their energies add up to at most the pass energy (the rest is the loop between questions).
  They are not opened with ``EnergyMonitor.begin_window`` inside the timed loop, which would measure at each
  end and add that work to the pass; taking the readings and measuring afterwards is what ``end_window(wait_s=0)``
  followed by ``monitor.measure(span)`` would give;
* **per-layer energy: an estimate.** The runtime exposes each step's duration (``layer_latency_ms``,
  ``perf_counter``) but not its start time on the sampler's clock, and a layer (~ms) is far shorter than
  any sampling period, so no layer window is measured. A layer's estimated energy for one question is the
  question window's mean power times that step's time; a pass's figure for layer *l* is the sum over its
  measured questions. Power is assumed constant within a question.

An energy figure is given only where samples were measured (or replayed): a window with no usable samples
reports ``None`` (``null`` in JSON), never 0; ``measured_s``/``coverage`` say how much of it the figure covers.
"""

import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from elma.power.energy_run import EARLY, FULL, FULL_DEPTH_POLICY, EnergyRun
from elma.power.integrate import Gap, Measurement, PowerTrace, measure
from elma.power.rails import total_rule_for

LAYER_METHOD = ("estimate: per question, the question window's mean board power x the measured time of each layer "
                "step (layer_latency_ms); summed over the measured questions of the pass. Not a measured layer window.")


@dataclass(frozen=True)
class WindowEnergy:
    """One measurement window: ``elma.power.Measurement``'s figures plus its coverage (None: not measured)."""

    key: str
    start_s: float  # on the sampler's clock
    end_s: float
    duration_s: float
    measured_s: float
    coverage: Optional[float]  # measured_s / duration_s
    energy_mj: Optional[float]  # board total; None where nothing was measured or the rails give no total
    mean_power_mw: Optional[float]
    peak_power_mw: Optional[float]
    sample_count: int
    gaps: List[Gap]  # clipped to the window


@dataclass(frozen=True)
class QuestionEnergy:
    index: int  # 1-based position in the pass
    qid: str
    exit_layer: int
    latency_ms: float  # perf_counter time of the ask call
    window: WindowEnergy


@dataclass(frozen=True)
class RailEnergy:
    rail: str
    energy_mj: Optional[float]  # over the time this rail was measured
    mean_power_mw: Optional[float]
    peak_power_mw: Optional[float]


@dataclass(frozen=True)
class LayerEnergyEstimate:
    """Estimated energy of one layer step over a pass (see the module docstring: not a measured window)."""

    layer: int  # 1-based
    questions: int  # questions of the pass that ran this layer
    time_ms: float  # their summed step times (layer, exit head, exit decision)
    questions_measured: int  # those of them whose question window has a measured energy
    energy_estimate_mj: Optional[float]  # sum over the measured ones; None if none was measured
    mean_energy_estimate_mj: Optional[float]  # per measured question that ran this layer


@dataclass(frozen=True)
class PassEnergy:
    name: str  # EARLY or FULL
    policy: str  # the spec that ran
    questions: int
    mean_exit_layer: float
    f1: float
    mean_latency_ms: float
    window: WindowEnergy  # the whole timed pass
    energy_per_question_mj: Optional[float]  # pass energy / questions (includes the loop between questions)
    question_energy_mean_mj: Optional[float]  # mean of the measured question windows
    question_energy_median_mj: Optional[float]
    questions_measured: int  # question windows with an energy figure
    rails: List[RailEnergy]
    layers: List[LayerEnergyEstimate]
    question_windows: List[QuestionEnergy]
    policy_source: str = ""  # where the policy came from: "calibrated default", "no calibrated default", "requested"


@dataclass(frozen=True)
class EnergyReport:
    command: str  # the exact command line
    model: str
    data: str
    source: str
    interval_ms: int  # sampling period asked for
    median_sample_interval_ms: Optional[float]  # between the samples of the measurement's span (None: fewer than 2)
    total_rule: Optional[str]  # the board total as elma.power.rails (or the meter) defines it; None: no total
    total_rails: List[str]  # the rails it adds up
    rails: List[str]  # every rail in the trace
    num_layers: int
    measurement: WindowEnergy  # sampler start to stop: both runs, model loads and warm-ups included
    passes: List[PassEnergy]  # early, full
    saving: Optional[float]  # 1 - E_early / E_full over the pass windows; None unless both were measured
    question_saving: Optional[float]  # 1 - mean question energy early / full
    gaps: List[Gap]  # every source failure of the measurement
    samples: int  # samples in samples.csv (the measurement's span)
    dropped_samples: int
    source_failures: int
    layer_energy_method: str
    notes: List[str] = field(default_factory=list)


def window_energy(trace: PowerTrace, key: str, start_s: float, end_s: float) -> WindowEnergy:
    """Measure ``[start_s, end_s]`` of ``trace`` (``elma.power.measure``)."""
    m: Measurement = measure(trace, key, start_s, end_s)
    return WindowEnergy(m.key, m.start_s, m.end_s, m.duration_s, m.measured_s, m.coverage, m.energy_mj, m.mean_power_mw,
                        m.peak_power_mw, m.sample_count, m.gaps)


def _rails(trace: PowerTrace, start_s: float, end_s: float) -> List[RailEnergy]:
    m = measure(trace, "rails", start_s, end_s)
    return [RailEnergy(rail, m.rail_energy_mj.get(rail), m.rail_mean_power_mw.get(rail), m.rail_peak_power_mw.get(rail))
            for rail in trace.rails()]


def layer_estimates(questions: Sequence, windows: Sequence[WindowEnergy], num_layers: int) -> List[LayerEnergyEstimate]:
    """Per-layer energy estimates of one pass: question mean power (mW) x step time (ms) / 1000 = mJ.

    Args:
        questions: the pass's ``QuestionResult``s (``layer_latency_ms`` per step run).
        windows: their measured windows, in the same order.
    """
    out = []
    for layer in range(1, num_layers + 1):
        ran = [(q, w) for q, w in zip(questions, windows) if len(q.layer_latency_ms) >= layer]
        measured = [q.layer_latency_ms[layer - 1] * w.mean_power_mw / 1e3 for q, w in ran if w.mean_power_mw is not None]
        total = sum(measured) if measured else None
        out.append(LayerEnergyEstimate(layer, len(ran), sum(q.layer_latency_ms[layer - 1] for q, _ in ran), len(measured),
                                       total, total / len(measured) if measured else None))
    return out


def pass_energy(name: str, run, trace: PowerTrace, num_layers: int) -> PassEnergy:
    """The figures of one benchmark run's timed pass (``run``: a ``BenchRun`` made with a power sampler)."""
    report = run.report
    pass_window = report.energy.windows[0]
    window = window_energy(trace, name, pass_window.start_s, pass_window.end_s)
    questions = [QuestionEnergy(i, q.qid, q.exit_layer, q.latency_ms, window_energy(trace, f"{name}/q{i}", q.start_s, q.end_s))
                 for i, q in enumerate(run.questions, start=1)]
    energies = [q.window.energy_mj for q in questions if q.window.energy_mj is not None]
    n = len(questions)
    return PassEnergy(
        name=name, policy=report.policy, questions=n, mean_exit_layer=report.result.mean_exit_layer,
        f1=float(report.result.metrics["f1"]), mean_latency_ms=report.result.latency.mean_ms, window=window,
        energy_per_question_mj=None if window.energy_mj is None else window.energy_mj / n,
        question_energy_mean_mj=statistics.mean(energies) if energies else None,
        question_energy_median_mj=statistics.median(energies) if energies else None,
        questions_measured=len(energies), rails=_rails(trace, window.start_s, window.end_s),
        layers=layer_estimates(run.questions, [q.window for q in questions], num_layers), question_windows=questions,
        policy_source=report.policy_source)


def _saving(early: Optional[float], full: Optional[float]) -> Optional[float]:
    if early is None or full is None or full <= 0:
        return None
    return 1.0 - early / full


def build_report(run: EnergyRun, command: str) -> EnergyReport:
    """Measure every window of ``run`` from its whole trace and gather the report's figures."""
    trace = run.trace
    early_run, full_run = run.runs[EARLY], run.runs[FULL]
    num_layers = early_run.report.num_layers
    passes = [pass_energy(EARLY, early_run, trace, num_layers), pass_energy(FULL, full_run, trace, num_layers)]
    early, full = passes
    rails = trace.rails()
    rule = run.total_rule or total_rule_for(rails)
    has_total = any(s.total_power_mw is not None for s in trace.samples)
    total_name = rule.name if rule is not None else "the recorded total_power_mw (its rule is not recorded)"
    span = trace.window(run.started_s, run.stopped_s)
    times = [sample.timestamp_s for sample in span.samples]
    spacing_ms = statistics.median(b - a for a, b in zip(times, times[1:])) * 1e3 if len(times) > 1 else None
    notes = _notes(run, passes, span, has_total, spacing_ms)
    return EnergyReport(
        command=command, model=run.config.model, data=run.config.data, source=run.source,
        interval_ms=run.config.power.interval_ms, median_sample_interval_ms=spacing_ms, total_rule=total_name if has_total else None,
        total_rails=list(rule.rails) if has_total and rule is not None else [], rails=rails, num_layers=num_layers,
        measurement=window_energy(trace, "measurement", run.started_s, run.stopped_s), passes=passes,
        saving=_saving(early.window.energy_mj, full.window.energy_mj),
        question_saving=_saving(early.question_energy_mean_mj, full.question_energy_mean_mj),
        gaps=list(trace.gaps), samples=len(span.samples), dropped_samples=run.dropped_samples,
        source_failures=run.failures, layer_energy_method=LAYER_METHOD, notes=notes)


def _notes(run: EnergyRun, passes: List[PassEnergy], span: PowerTrace, has_total: bool,
           spacing_ms: Optional[float]) -> List[str]:
    notes = []
    early, full = passes
    if early.policy == FULL_DEPTH_POLICY:
        notes.append(f"the early-exit pass ran policy 'none' (full depth; {early.policy_source or 'requested'}): "
                     f"pass --policy SPEC or run `elma calibrate`, else the saving is only noise")
    elif early.mean_exit_layer >= full.mean_exit_layer:
        notes.append(f"policy {early.policy} exited no earlier than full depth (mean exit layer "
                     f"{early.mean_exit_layer:.2f}): any energy difference between the passes is not from early exit")
    inside = [s for s in span.samples if run.started_s <= s.timestamp_s <= run.stopped_s]
    if not run.trace.samples:
        notes.append("the source gave no sample at all: every energy is null")
    elif not inside:
        notes.append("no power sample falls within the run: a recorded log or CSV on another clock gives no figure "
                     "here (replay it with --realtime-replay to re-stamp it from now)")
    elif not has_total:
        notes.append("the source's rails define no board total (elma.power.rails): every total is null; see the "
                     "per-rail figures")
    if run.trace.gaps:
        notes.append(f"{len(run.trace.gaps)} gap(s): the source failed and was reopened every "
                     f"{run.config.power.retry_s:g} s; energies cover only the measured part of each window (coverage)")
    for p in passes:
        if p.window.energy_mj is not None and p.window.coverage is not None and p.window.coverage < 0.999:
            notes.append(f"{p.name} pass measured over {100 * p.window.coverage:.1f}% of its duration only")
    question_s = [q.window.duration_s for p in passes for q in p.question_windows]
    if spacing_ms is not None and question_s and 1e3 * statistics.mean(question_s) < spacing_ms:
        notes.append(f"questions last {1e3 * statistics.mean(question_s):.1f} ms on average, less than the "
                     f"{spacing_ms:.0f} ms between samples: per-question energies interpolate the power between samples")
    return notes
