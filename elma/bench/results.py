"""Result types of ``elma-bench`` and the plain functions that fill them (no model, no clock).

Everything here is a dataclass serialised with ``asdict`` (report.json) or a pure function of numbers:
the per-question record (``QuestionResult``), one configuration over the question set (``ConfigResult``,
``summarise``), latency ratios with their interval (``RatioCI``), sweep points and the whole report.
"""

import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench.roofline import MatmulPeak, RooflineRow
from elma.data.squad import Example
from elma.metrics.squad_v2 import compute_f1, squad_v2_scores


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
    flops: float = 0.0  # what the question cost in FLOPs at its exit layers (elma.bench.roofline.question_flops)
    token_layers: int = 0  # tokens times layers run over its windows (fewer with skimming; 0: unknown)


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class RatioCI:
    """A latency ratio with its paired bootstrap interval (``elma.bench.bootstrap``).

    ``ratio`` is the reference's mean latency over this configuration's (the speed-up: above 1 means faster
    than the reference), on the same questions timed back to back.
    """

    reference: str  # name of the reference configuration
    ratio: float  # sum of the reference's latencies / sum of this configuration's
    low: float  # bootstrap percentile interval at ``level``
    high: float
    level: float  # 0.95
    resamples: int  # bootstrap resamples of the questions
    mean_of_ratios: float  # mean over questions of reference ms / this ms (a per-question view of the same)


@dataclass(frozen=True)
class ConfigResult:
    """One configuration (the chosen policy, or a baseline) over the whole question set."""

    name: str  # e.g. "policy entropy:0.4,0.4", "fused graph fp32", "static:3"
    kind: str  # "policy", "chain", "fused", "compare-fused", "compare-policy", "static", "torch-eager", "hf-qa", "front"
    latency_source: str  # "measured" (timed, interleaved) or "simulated" (derived from the chain's step times)
    metrics: Dict[str, float]  # official SQuAD 2.0 numbers (exact, f1, HasAns_*, NoAns_*, best_*)
    mean_exit_layer: float
    computation_saving: float  # 1 - mean exit layer / number of layers
    exit_histogram: List[int]  # questions per exit layer: [layer 1, layer 2, ...]
    latency: LatencyStats
    throughput_qps: float  # questions per second of the pass (derived rows: 1000 / mean latency)
    mean_gflops_per_question: float
    unsolved_rate: float = 0.0  # share of questions no exit was confident about (policy rows)
    ratios: List[RatioCI] = field(default_factory=list)  # speed-up against each reference (the fused graph first)
    mean_token_layers: float = 0.0  # per question: tokens times layers run over its windows (0: unknown)
    mean_tokens_per_layer: float = 0.0  # per question: token-layers / exit layer, averaged (0: unknown)


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
    mean_latency_ms: float  # simulated: the chain's measured step times up to the simulated exit (elma.bench.sweep)
    unsolved_rate: float
    pareto_layers: bool  # on the front of (max F1, min mean layers) over every point
    pareto_latency: bool  # on the front of (max F1, min mean latency)
    measured_latency_ms: Optional[float] = None  # with --measure-front: a real timed pass of this setting
    measured_f1: Optional[float] = None  # F1 of that pass (equals ``f1``: the simulation is exact)
    mean_token_layers: float = 0.0  # per question: tokens times layers (skimming lowers it, not the layers)
    pareto_token_layers: bool = False  # on the front of (max F1, min mean token-layers)
    skim: str = ""  # the skim stages of the setting ("" none); part of ``spec``


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
    result: ConfigResult  # the chosen policy, first interleaved round
    repeats: RepeatStats
    baselines: List[ConfigResult] = field(default_factory=list)
    sweep: List[SweepPoint] = field(default_factory=list)
    roofline: Optional[Roofline] = None
    energy: Optional[EnergyStats] = None  # with a power source
    notes: List[str] = field(default_factory=list)  # what was skipped and why
    interleaved: bool = True  # every measured row timed question by question, round-robin, rotating order
    reference: str = ""  # the configuration every ratio is taken against first (the fused graph when it ran)
    peak_rss_stages_mb: Dict[str, Optional[float]] = field(default_factory=dict)  # ru_maxrss after each stage
    sweep_record_bytes: int = 0  # what the sweep kept of the recorded exits (elma.bench.sweep.ExitRecord.nbytes)
    policy_source: str = ""  # where ``policy`` came from: "calibrated default", "no calibrated default", "requested"

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass
class BenchRun:
    """What ``run_bench`` returns: the report and the predictions files' contents (the chosen policy, round 1)."""

    report: BenchReport
    predictions: Dict[str, str]
    na_probs: Dict[str, float]
    questions: List[QuestionResult] = field(default_factory=list)  # the chosen policy, round 1, per question (times included)


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


def summarise(name: str, kind: str, source: str, examples: Sequence[Example], results: Sequence[QuestionResult],
              num_layers: int, wall_s: Optional[float], flops: Optional[Sequence[float]] = None) -> ConfigResult:
    """One configuration's row: official metrics, exits, latency (``flops`` None: each result's own)."""
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
    flops = [r.flops for r in results] if flops is None else flops
    known = all(r.token_layers > 0 for r in results)
    token_layers = float(np.mean([r.token_layers for r in results])) if known else 0.0
    per_layer = float(np.mean([r.token_layers / r.exit_layer for r in results])) if known else 0.0
    return ConfigResult(name, kind, source, metrics, mean_layer, 1.0 - mean_layer / num_layers, hist, lat, qps,
                        float(np.mean(flops)) / 1e9, unsolved_rate, [], token_layers, per_layer)


def same_outcomes(a: Sequence[QuestionResult], b: Sequence[QuestionResult]) -> bool:
    return [(r.qid, r.prediction, r.exit_layer, r.window_layers, r.na_prob) for r in a] == \
        [(r.qid, r.prediction, r.exit_layer, r.window_layers, r.na_prob) for r in b]
