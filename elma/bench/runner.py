"""The benchmark runner: timed passes, offline policy sweep, baselines and roofline, as one ``BenchReport``.

Where each number comes from:

* **Timed pass** (the chosen policy, and every ``--repeat``), after ``warmup`` untimed questions: questions one
  at a time (batch 1) through ``Runtime.ask``; a question's latency is the wall time of that call, tokenisation to decoded answer.
  Throughput is questions over the wall time of the whole pass.
* **Sweep and ``static:k`` baselines**: the model runs once over the questions recording every exit's logits
  (``elma.runtime.calibrate.record``), and every policy setting is simulated on them, exactly as the runtime
  decides (tested in tests/runtime/test_calibrate.py): F1 and exit layers are exact. Their latency is
  *derived*, not measured: per question, the measured non-layer time (tokenisation, embeddings, span decoding)
  plus the measured per-layer step times up to the simulated exit layer, both from a timed full-depth pass.
  Policy decision costs beyond the full-depth pass's are therefore not included (``latency_source`` says
  "derived" on every such row).
* **Fused ONNX graph** (bundles), **PyTorch eager** (ELMA model folders, or ``torch_model``) and a
  **transformers ``AutoModelForQuestionAnswering``** checkpoint (``hf_qa``): measured, batch 1, with the same
  window geometry and span decoding as the runtime (``elma.bench.baselines``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench.roofline import MatmulPeak, RooflineRow, measure_matmul_peak, question_flops, roofline_row
from elma.data.squad import Example, load_squad
from elma.errors import DataError
from elma.metrics.squad_v2 import compute_f1, squad_v2_scores
from elma.runtime.policies import NoExitPolicy

logger = logging.getLogger(__name__)

SWEEP_POLICIES = ("entropy", "maxprob", "patience", "similarity", "static")


@dataclass(frozen=True)
class BenchConfig:
    """``elma-bench`` settings; CLI flags map 1:1 onto these fields."""

    model: str  # bundle folder or ELMA model folder
    data: str  # SQuAD 1.1/2.0 JSON
    policy: Optional[str] = None  # exit policy spec; None: the model's calibrated default
    backend: Optional[str] = None  # onnxruntime (bundles, default), tensorrt, torch (model folders)
    limit: Optional[int] = None  # first N questions of the file; None: all
    repeat: int = 1  # timed passes of the chosen policy (spread reported)
    warmup: int = 8  # questions answered untimed before the first timed pass (sessions, allocator, caches)
    sweep: bool = False  # simulate every policy over a parameter grid; Pareto front and plots
    measure_front: bool = False  # with sweep: also time each distinct setting on the F1-vs-layers front for real
    baselines: bool = True  # fused ONNX graph, static:k at every layer, PyTorch eager where possible
    torch_model: Optional[str] = None  # ELMA model folder for the PyTorch eager baseline of a bundle
    hf_qa: Optional[str] = None  # Hugging Face AutoModelForQuestionAnswering checkpoint folder, as a further baseline
    ffn_size: Optional[int] = None  # feed-forward width for the FLOPs count; None: config.json, else 4 x hidden
    progress: bool = False  # tqdm bar with running F1 and ETA on stderr
    power_source: Optional[str] = None  # elma.power source spec (tegrastats, ina3221, jtop, keysight:..., null); None: none
    power_interval_ms: int = 100  # sampling period of the power source, ms

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1 (got {self.repeat})")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.power_interval_ms <= 0:
            raise ValueError(f"--power-interval-ms must be positive (got {self.power_interval_ms})")


# ---- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionResult:
    """One question of one pass."""

    qid: str
    prediction: str  # "" = no answer
    na_prob: float  # sigmoid(null score - best span score - null threshold): above 0.5 exactly when no answer
    exit_layer: int  # deepest window's exit (what the question cost)
    window_layers: Tuple[int, ...]
    latency_ms: float
    layer_latency_ms: Tuple[float, ...] = ()  # per step run (runtime passes only)
    unsolved: bool = False  # no exit was confident by the last layer (runtime passes with an early-exit policy)
    start_s: Optional[float] = None  # timed passes: clock reading just before the question (the power sampler's clock), s
    end_s: Optional[float] = None  # timed passes: clock reading just after its answer, s (elma-energy's per-question windows)


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class ConfigResult:
    """One configuration (the chosen policy, or a baseline) over the whole question set."""

    name: str  # e.g. "policy entropy:0.4,0.4", "fused ONNX graph", "static:3"
    kind: str  # "policy", "fused", "static", "torch-eager"
    latency_source: str  # "measured" (timed batch-1 pass) or "derived" (see the module docstring)
    metrics: Dict[str, float]  # official SQuAD 2.0 numbers (exact, f1, HasAns_*, NoAns_*, best_*)
    mean_exit_layer: float
    computation_saving: float  # 1 - mean exit layer / number of layers
    exit_histogram: List[int]  # questions per exit layer: [layer 1, layer 2, ...]
    latency: LatencyStats
    throughput_qps: float  # questions per second of the pass (derived rows: 1000 / mean latency)
    mean_gflops_per_question: float
    unsolved_rate: float = 0.0  # share of questions no exit was confident about (policy rows)


@dataclass(frozen=True)
class RepeatStats:
    repeats: int
    mean_latency_ms: List[float]  # per pass
    min_mean_latency_ms: float
    median_mean_latency_ms: float
    max_mean_latency_ms: float
    throughput_qps: List[float]  # per pass
    metrics_identical: bool  # every pass gave the same predictions, exit layers and metrics


@dataclass(frozen=True)
class SweepPoint:
    policy: str  # policy name: one line per name in the plots
    spec: str
    f1: float
    exact: float
    mean_layers: float
    mean_latency_ms: float  # derived (see the module docstring)
    unsolved_rate: float
    pareto_layers: bool  # on the front of (max F1, min mean layers) over every point
    pareto_latency: bool  # on the front of (max F1, min mean latency)
    measured_latency_ms: Optional[float] = None  # with --measure-front: a real timed pass of this setting
    measured_f1: Optional[float] = None  # F1 of that pass (equals ``f1``: the simulation is exact)


@dataclass(frozen=True)
class Roofline:
    peak: MatmulPeak
    hidden_size: int
    ffn_size: int
    ffn_size_source: str  # "config.json", "--ffn-size" or "assumed 4 x hidden"
    mean_window_tokens: float  # measured sequence lengths (no padding)
    rows: List[RooflineRow]


@dataclass(frozen=True)
class EnergyStats:
    """Board energy of each timed pass, from ``elma.power`` measurement windows (one window per pass)."""

    source: str  # the meter's description
    interval_ms: int
    energy_per_question_mj: List[Optional[float]]  # per pass: window energy / questions (None: nothing measured)
    mean_power_mw: List[Optional[float]]  # per pass
    windows: List[object]  # per pass: the ``elma.power.Measurement`` (coverage, gaps, rails)


@dataclass(frozen=True)
class BenchReport:
    machine: Dict[str, object]
    versions: Dict[str, str]
    settings: Dict[str, object]
    model_kind: str  # "bundle" or "model"
    backend: str  # what ran the timed passes
    policy: str  # spec actually used
    num_layers: int
    questions: int
    windows: int
    model_load_ms: float
    peak_rss_mb: Optional[float]  # peak resident memory after loading and the timed passes (ru_maxrss; None if unknown)
    peak_rss_end_mb: Optional[float]  # the same at the end of the run (baselines and recorded logits included)
    result: ConfigResult  # the chosen policy, first timed pass
    repeats: RepeatStats
    baselines: List[ConfigResult] = field(default_factory=list)
    sweep: List[SweepPoint] = field(default_factory=list)
    roofline: Optional[Roofline] = None
    energy: Optional[EnergyStats] = None  # with a power source
    notes: List[str] = field(default_factory=list)  # what was skipped and why
    policy_source: str = ""  # where ``policy`` came from: "calibrated default", "no calibrated default", "requested"

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass
class BenchRun:
    """What ``run_bench`` returns: the report and the predictions files' contents (first timed pass)."""

    report: BenchReport
    predictions: Dict[str, str]
    na_probs: Dict[str, float]
    questions: List[QuestionResult] = field(default_factory=list)  # first timed pass, per question (times included)


# ---- helpers ----------------------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    if x != x:
        return 0.5
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def na_prob(span_minus_null: float, null_threshold: float) -> float:
    """No-answer probability of the official format: sigmoid(null - span - threshold); 1.0 when no span exists."""
    if not math.isfinite(span_minus_null):
        return 1.0
    return _sigmoid(-span_minus_null - null_threshold)


def latency_stats(values_ms: Sequence[float]) -> LatencyStats:
    a = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return LatencyStats(float(a.mean()), p50, p90, p99, float(a.min()), float(a.max()))


def question_f1(gold: Sequence[str], prediction: str) -> float:
    """Official per-question F1 (max over the gold answers; an unanswerable question is scored against '')."""
    return max(compute_f1(g, prediction) for g in (list(gold) or [""]))


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[bool]:
    """For (cost, f1) pairs: True where no other point has cost <= and f1 >= with one strictly better."""
    out = []
    for i, (c, f) in enumerate(points):
        dominated = any((c2 <= c and f2 >= f and (c2 < c or f2 > f)) for j, (c2, f2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def peak_rss_mb() -> Optional[float]:
    """Peak resident memory of this process in MiB: ru_maxrss (KiB on Linux, bytes on macOS), else psutil's
    peak working set (Windows), else None."""
    try:
        import resource
    except ImportError:
        try:
            import psutil
        except ImportError:
            return None
        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)
        return peak / (1024 * 1024) if peak else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def machine_info() -> Dict[str, object]:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def versions() -> Dict[str, str]:
    """Versions of what ran (heavy modules only if this process already imported them)."""
    import elma

    out = {"elma": elma.__version__, "numpy": np.__version__}
    for name in ("tokenizers", "onnxruntime", "torch", "transformers", "tensorrt"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        logger.warning("tqdm is not installed: no progress bar (pip install tqdm)")
        return None
    return tqdm(total=total, desc=desc, unit="q", mininterval=1.0, file=sys.stderr)


# ---- passes -----------------------------------------------------------------------------------------------------


def timed_pass(rt, examples: Sequence[Example], policy, desc: str = "bench", progress: bool = False,
               clock: Callable[[], float] = time.monotonic) -> Tuple[List[QuestionResult], float]:
    """Every question through ``rt.ask`` at batch 1. Returns (per question, wall seconds of the pass).

    Each question's ``start_s``/``end_s`` are ``clock()`` readings around its ``ask`` call (the power sampler's
    clock, so energy windows can be cut per question); its latency is measured with ``perf_counter``.
    """
    bar = _progress(len(examples), desc, progress)
    out: List[QuestionResult] = []
    f1_sum, bar_s = 0.0, 0.0
    t_pass = time.perf_counter()
    try:
        for i, ex in enumerate(examples):
            start_s = clock()
            t0 = time.perf_counter()
            a = rt.ask(ex.question, ex.context, policy=policy)
            t1 = time.perf_counter()
            end_s = clock()
            out.append(QuestionResult(ex.qid, a.text, na_prob(a.score, rt.info.null_threshold(a.exit_layer)), a.exit_layer,
                                      tuple(a.window_exit_layers), (t1 - t0) * 1e3, tuple(a.layer_latency_ms), a.unsolved,
                                      start_s, end_s))
            if bar is not None:  # its time (running F1, redraw) is left out of the pass's wall time
                f1_sum += question_f1(ex.answer_texts, a.text)
                bar.update(1)
                bar.set_postfix(F1=f"{100 * f1_sum / (i + 1):.1f}", refresh=False)
                bar_s += time.perf_counter() - t1
    finally:
        if bar is not None:
            bar.close()
    return out, time.perf_counter() - t_pass - bar_s


def summarise(name: str, kind: str, source: str, examples: Sequence[Example], results: Sequence[QuestionResult],
              num_layers: int, wall_s: Optional[float], flops: Sequence[float]) -> ConfigResult:
    gold = {ex.qid: ex.answer_texts for ex in examples}
    preds = {r.qid: r.prediction for r in results}
    probs = {r.qid: r.na_prob for r in results}
    metrics = {k: int(v) if k.endswith("total") else float(v) for k, v in squad_v2_scores(gold, preds, probs).items()}
    hist = [0] * num_layers
    for r in results:
        hist[r.exit_layer - 1] += 1
    mean_layer = sum(r.exit_layer for r in results) / len(results)
    lat = latency_stats([r.latency_ms for r in results])
    qps = len(results) / wall_s if wall_s else (1e3 / lat.mean_ms if lat.mean_ms > 0 else float("inf"))
    unsolved_rate = sum(r.unsolved for r in results) / len(results)
    return ConfigResult(name, kind, source, metrics, mean_layer, 1.0 - mean_layer / num_layers, hist, lat, qps,
                        float(np.mean(flops)) / 1e9, unsolved_rate)


def _same(a: Sequence[QuestionResult], b: Sequence[QuestionResult]) -> bool:
    return [(r.qid, r.prediction, r.exit_layer, r.window_layers, r.na_prob) for r in a] == \
        [(r.qid, r.prediction, r.exit_layer, r.window_layers, r.na_prob) for r in b]


# ---- the run ----------------------------------------------------------------------------------------------------


def load_examples(data: str, limit: Optional[int]) -> List[Example]:
    """The questions to run: the file validated (DataError on anything that is not a usable SQuAD file)."""
    examples = load_squad(Path(data))
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise DataError(f"{data}: no questions to run")
    return examples


def _ffn_size(cfg: BenchConfig, rt) -> Tuple[int, str]:
    if cfg.ffn_size:
        return int(cfg.ffn_size), "--ffn-size"
    import json

    for folder in (cfg.torch_model, cfg.model if rt.info.kind == "model" else None):
        if folder and (Path(folder) / "config.json").is_file():
            value = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("intermediate_size")
            if value:
                return int(value), "config.json"
    return 4 * _hidden_size(rt), "assumed 4 x hidden"


def _hidden_size(rt) -> int:
    bundle = getattr(rt.backend, "bundle", None)
    if bundle is not None:
        return int(bundle.hidden_size)
    steps = getattr(rt.backend, "steps", None)
    if steps is not None:
        import json

        return int(json.loads((Path(rt.info.path) / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    raise ValueError("cannot tell the model's hidden size")


def run_bench(cfg: BenchConfig, examples: Optional[List[Example]] = None,
              on_stage: Optional[Callable[[str], None]] = None, meter=None, sampler=None) -> BenchRun:
    """Run the benchmark ``cfg`` describes.

    Args:
        examples: the questions (already loaded and limited); None loads ``cfg.data``.
        on_stage: called with the name of each stage as it starts (the CLI logs them).
        meter: an ``elma.power.PowerMeter`` to use instead of ``cfg.power_source`` (tests inject fakes).
        sampler: a started ``elma.power.PowerSampler`` owned by the caller, used instead of ``meter`` or
            ``cfg.power_source`` and left running (``elma-energy`` measures two runs under one sampler).

    Raises:
        DataError: the data file is missing or not SQuAD, or holds no questions.
        BundleError, ModelLoadError, ValueError: the model or the policy cannot be used.
    """
    from elma.runtime.engine import Runtime, is_bundle

    stage = on_stage or (lambda s: logger.info("%s", s))
    if examples is None:
        examples = load_examples(cfg.data, cfg.limit)
    backend = cfg.backend or (None if is_bundle(cfg.model) else "torch")
    notes: List[str] = []

    peak_before = measure_matmul_peak()  # before and after the run: the better one is this machine's peak
    stage("loading the model")
    t0 = time.perf_counter()
    rt = Runtime.open(cfg.model, backend=backend, policy=cfg.policy)
    load_ms = (time.perf_counter() - t0) * 1e3
    with rt:
        L = rt.num_layers
        policy = rt.policy
        lengths = [[len(w) for w in rt.windows([(ex.question, ex.context)])] for ex in examples]
        hidden = _hidden_size(rt)
        ffn, ffn_source = _ffn_size(cfg, rt)

        def flops_of(results: Sequence[QuestionResult]) -> List[float]:
            return [question_flops(t, r.window_layers or (r.exit_layer,) * len(t), hidden, ffn)
                    for t, r in zip(lengths, results)]

        if cfg.warmup:
            stage(f"warm-up: {min(cfg.warmup, len(examples))} questions, untimed")
            for ex in examples[:cfg.warmup]:
                rt.ask(ex.question, ex.context, policy=policy)
        passes = []
        energy: Optional[EnergyStats] = None
        with _power_sampler(cfg, meter, sampler) as sampler:
            monitor = None
            clock = time.monotonic
            if sampler is not None:
                from elma.power.monitor import EnergyMonitor

                monitor = EnergyMonitor(sampler)
                clock = sampler.clock
            windows = []
            for k in range(cfg.repeat):
                stage(f"timed pass {k + 1}/{cfg.repeat}: {policy.spec}")
                if monitor is not None:
                    monitor.begin_window(f"pass-{k + 1}")
                passes.append(timed_pass(rt, examples, policy, f"{policy.spec} {k + 1}/{cfg.repeat}", cfg.progress, clock))
                if monitor is not None:
                    windows.append(monitor.end_window(f"pass-{k + 1}"))
            if sampler is not None:
                n = len(examples)
                energy = EnergyStats(sampler.meter.describe(), cfg.power_interval_ms,
                                     [None if m.energy_mj is None else m.energy_mj / n for m in windows],
                                     [m.mean_power_mw for m in windows], windows)
        first, wall = passes[0]
        result = summarise(f"policy {policy.spec}", "policy", "measured", examples, first, L, wall, flops_of(first))
        rss_timed = peak_rss_mb()
        means = [float(np.mean([r.latency_ms for r in p])) for p, _ in passes]
        repeats = RepeatStats(cfg.repeat, means, min(means), statistics.median(means), max(means),
                              [len(p) / w for p, w in passes], all(_same(first, p) for p, _ in passes[1:]))

        baselines: List[ConfigResult] = []
        sweep: List[SweepPoint] = []
        if cfg.baselines or cfg.sweep:
            from elma.runtime.calibrate import record

            stage("timed full-depth pass, every exit head run (per-layer times for derived latencies)")
            full, full_wall = timed_pass(rt, examples, EveryExitFullDepth(), "full depth", cfg.progress)
            stage("recording every exit's logits")
            recorded = record(rt, examples)
            layer_ms = [list(r.layer_latency_ms) for r in full]
            other_ms = [r.latency_ms - sum(r.layer_latency_ms) for r in full]

            def derived_ms(exits) -> List[float]:
                return [o + sum(steps[:max(layer for layer, _ in per_window)])
                        for o, steps, per_window in zip(other_ms, layer_ms, exits)]

            if cfg.baselines:
                baselines.append(summarise("per-layer chain, full depth", "policy", "measured", examples, full, L,
                                           full_wall, flops_of(full)))
                baselines += _static_baselines(recorded, examples, L, derived_ms, flops_of)
                baselines += _measured_baselines(cfg, rt, examples, lengths, hidden, ffn, stage, notes)
            if cfg.sweep:
                sweep = _sweep(recorded, derived_ms, stage)
                if cfg.measure_front:
                    sweep = _measure_front(rt, examples, sweep, stage, cfg.progress)
        peak = max(peak_before, measure_matmul_peak(), key=lambda m: m.gflops_per_s)
        rows = [roofline_row(c.name, c.mean_gflops_per_question * 1e9, c.latency.mean_ms, peak) for c in [result, *baselines]]
        roof = Roofline(peak, hidden, ffn, ffn_source, float(np.mean([t for ts in lengths for t in ts])), rows)
        report = BenchReport(machine_info(), versions(), asdict(cfg), rt.info.kind, rt.backend.describe(), policy.spec, L,
                             len(examples), sum(len(t) for t in lengths), load_ms, rss_timed, peak_rss_mb(), result, repeats,
                             baselines, sweep, roof, energy, notes, rt.policy_source)
    return BenchRun(report, {r.qid: r.prediction for r in first}, {r.qid: r.na_prob for r in first}, first)


class EveryExitFullDepth(NoExitPolicy):
    """Full depth with every exit head run and decided on: what an early-exit policy pays per layer.

    ``none`` itself skips the heads before the last layer; derived latencies need the steps with their heads.
    """

    def reads_exit(self, layer: int) -> bool:
        return True


@contextlib.contextmanager
def _power_sampler(cfg: BenchConfig, meter=None, sampler=None):
    """A started ``PowerSampler``: the caller's ``sampler`` (not stopped here), else one over ``meter`` or
    ``cfg.power_source`` (None when none is given)."""
    if sampler is not None:
        yield sampler
        return
    if meter is None and cfg.power_source is None:
        yield None
        return
    from elma.power.sampler import PowerSampler

    if meter is None:
        from elma.power.sources import PowerConfig, open_meter

        meter = open_meter(PowerConfig(source=cfg.power_source, interval_ms=cfg.power_interval_ms))
    sampler = PowerSampler(meter, interval_s=cfg.power_interval_ms / 1e3).start()
    try:
        yield sampler
    finally:
        sampler.stop()


def _static_baselines(recorded, examples, L: int, derived_ms, flops_of) -> List[ConfigResult]:
    """Appointed-Exit: ``static:k`` for every k, simulated on the recorded logits, latency derived."""
    from elma.runtime.policies import StaticPolicy

    out = []
    for k in range(1, L + 1):
        policy = StaticPolicy(k)
        exits = recorded.window_exits(policy)
        results = []
        for qi, (q, per_window) in enumerate(zip(recorded.questions, exits)):
            layers = tuple(layer for layer, _ in per_window)
            results.append(QuestionResult(q.example.qid, recorded.prediction(qi, layers),
                                          _recorded_na_prob(recorded, qi, layers), max(layers), layers, 0.0))
        lat = derived_ms(exits)
        results = [QuestionResult(r.qid, r.prediction, r.na_prob, r.exit_layer, r.window_layers, ms)
                   for r, ms in zip(results, lat)]
        out.append(summarise(f"static:{k}", "static", "derived", examples, results, L, None, flops_of(results)))
    return out


def _recorded_na_prob(recorded, qi: int, layers: Tuple[int, ...]) -> float:
    from elma.runtime.spans import decode_answer

    q = recorded.questions[qi]
    starts = [lg[layer - 1, 0] for lg, layer in zip(q.logits, layers)]
    ends = [lg[layer - 1, 1] for lg, layer in zip(q.logits, layers)]
    threshold = recorded.null_thresholds[max(layers) - 1] if recorded.null_thresholds else 0.0
    span = decode_answer(q.example.context, starts, ends, q.offsets, threshold)
    return na_prob(span.span_score - span.null_score, threshold)


def _sweep(recorded, derived_ms, stage) -> List[SweepPoint]:
    raw = []
    for name in SWEEP_POLICIES:
        stage(f"sweep: {name}")
        for policy in recorded.grid(name):
            exits = recorded.window_exits(policy)
            s = recorded.score(policy.spec, exits)
            raw.append((name, s, float(np.mean(derived_ms(exits)))))
    front_layers = pareto_front([(s.mean_layers, s.f1) for _, s, _ in raw])
    front_latency = pareto_front([(ms, s.f1) for _, s, ms in raw])
    return [SweepPoint(name, s.spec, s.f1, s.exact, s.mean_layers, ms, s.unsolved_rate, fl, ft)
            for (name, s, ms), fl, ft in zip(raw, front_layers, front_latency)]


def _measure_front(rt, examples, points: List[SweepPoint], stage, progress: bool) -> List[SweepPoint]:
    """A timed pass for each distinct (mean layers, F1) setting on the F1-vs-layers front: measured next to derived."""
    from dataclasses import replace

    from elma.runtime.policies import parse_policy

    gold = {ex.qid: ex.answer_texts for ex in examples}
    done: Dict[Tuple[float, float], Tuple[float, float]] = {}
    out = []
    for p in points:
        key = (p.mean_layers, p.f1)
        if p.pareto_layers and key not in done:
            stage(f"sweep: timing front point {p.spec}")
            results, _ = timed_pass(rt, examples, parse_policy(p.spec), p.spec, progress)
            f1 = float(squad_v2_scores(gold, {r.qid: r.prediction for r in results})["f1"])
            done[key] = (float(np.mean([r.latency_ms for r in results])), f1)
        if p.pareto_layers:
            p = replace(p, measured_latency_ms=done[key][0], measured_f1=done[key][1])
        out.append(p)
    return out


def _measured_baselines(cfg: BenchConfig, rt, examples, lengths, hidden: int, ffn: int, stage, notes: List[str]) -> List[ConfigResult]:
    from elma.bench import baselines as bl

    out = []
    L = rt.num_layers
    full_flops = [question_flops(t, (L,) * len(t), hidden, ffn) for t in lengths]
    bundle = getattr(rt.backend, "bundle", None)
    if bundle is not None:
        stage("baseline: fused ONNX graph")
        try:
            results, wall, providers = bl.fused_pass(rt, bundle, examples)
            notes.append(f"fused ONNX graph run by onnxruntime with {', '.join(providers)}")
            out.append(summarise("fused ONNX graph, full depth", "fused", "measured", examples, results, L, wall, full_flops))
        except ImportError as err:
            notes.append(f"fused ONNX baseline skipped: {err}")
    else:
        notes.append("fused ONNX baseline skipped: the model is not a bundle")
    torch_model = cfg.torch_model or (cfg.model if rt.info.kind == "model" else None)
    if torch_model:
        stage("baseline: PyTorch eager")
        try:
            results, wall = bl.torch_eager_pass(torch_model, rt, examples)
            out.append(summarise("PyTorch eager, full depth (last exit)", "torch-eager", "measured", examples, results, L,
                                 wall, full_flops))
        except ImportError as err:
            notes.append(f"PyTorch eager baseline skipped: {err}")
    else:
        notes.append("PyTorch eager baseline skipped: a bundle holds no PyTorch weights (pass --torch-model MODEL_FOLDER)")
    if cfg.hf_qa:
        stage("baseline: transformers AutoModelForQuestionAnswering")
        try:
            results, wall, flops = bl.hf_qa_pass(cfg.hf_qa, rt, examples)
            out.append(summarise(f"transformers QA {Path(cfg.hf_qa).name}, PyTorch eager", "hf-qa", "measured", examples,
                                 results, max(r.exit_layer for r in results), wall, flops))
        except ImportError as err:
            notes.append(f"transformers QA baseline skipped: {err}")
    else:
        notes.append("no transformers AutoModelForQuestionAnswering baseline: pass --hf-qa CHECKPOINT (an ELMA model "
                     "is multi-exit, not an HF QA checkpoint)")
    return out
