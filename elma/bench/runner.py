"""``run_bench``: the stages of one ``elma-bench`` run, each in its own module.

1. **Record** (with baselines or ``--sweep``): every exit of every question, one question at a time,
   reduced at once to a few hundred bytes per window (``elma.bench.sweep``); every sweep setting and the
   ``static:k`` rows are simulated on it (exits and F1 exact, latency *simulated*).
2. **Time, interleaved** (``elma.bench.schedule``): the chosen policy and its baselines
   (``elma.bench.configs``) answer each question back to back, order balanced per question, after an
   untimed warm-up; ``--repeat N`` runs N such rounds.
3. **Summarise** (``elma.bench.results``): official metrics per configuration, and every latency ratio
   against the fused graph (and the per-layer chain at full depth) with a paired bootstrap 95% interval
   (``elma.bench.bootstrap``); the simulated latencies of the sweep from the timed every-exit chain;
   roofline; energy per round with a power source (``elma.bench.power``).
"""

import contextlib
import logging
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, ratio_ci
from elma.bench.configs import (  # noqa: F401  (EveryExitFullDepth: re-exported)
    Configuration,
    EveryExitFullDepth,
    FusedConfig,
    HfQaConfig,
    ModelDims,
    PolicyConfig,
    RuntimeFlops,
    TorchEagerConfig,
    model_dims,
    precision_label,
    source_model_folder,
)
from elma.bench.power import RoundWindows, power_sampler
from elma.bench.results import (  # noqa: F401  (re-exported: the runner's names before the split)
    BenchReport,
    BenchRun,
    ConfigResult,
    EnergyStats,
    LatencyStats,
    QuestionResult,
    RatioCI,
    RepeatStats,
    Roofline,
    SweepPoint,
    latency_stats,
    machine_info,
    na_prob,
    pareto_front,
    peak_rss_mb,
    question_f1,
    same_outcomes,
    summarise,
    versions,
)
from elma.bench.roofline import measure_matmul_peak, roofline_row
from elma.data.squad import Example, load_squad
from elma.errors import DataError

logger = logging.getLogger(__name__)

CHAIN = "per-layer chain, full depth"
EVERY_EXIT = "per-layer chain, every exit head (source of simulated latencies)"


@dataclass(frozen=True)
class BenchConfig:
    """``elma-bench`` settings; CLI flags map 1:1 onto these fields."""

    model: str  # bundle folder or ELMA model folder
    data: str  # SQuAD 1.1/2.0 JSON
    policy: Optional[str] = None  # exit policy spec; None: the model's calibrated default
    backend: Optional[str] = None  # onnxruntime (bundles, default), tensorrt, torch (model folders)
    limit: Optional[int] = None  # first N questions of the file; None: all
    repeat: int = 1  # interleaved rounds over the questions (spread of the policy's mean reported)
    warmup: int = 8  # questions answered untimed by every configuration first (sessions, allocator, caches)
    sweep: bool = False  # simulate every policy over a parameter grid; Pareto front and plots
    measure_front: bool = False  # with sweep: also time each distinct setting on the F1-vs-layers front, interleaved
    sweep_skim: Tuple[str, ...] = ()  # with sweep: skim settings ("skim:2,0.001"), one more recording pass each
    baselines: bool = True  # chain, fused graph, static:k (simulated), PyTorch eager, --compare, --hf-qa
    torch_model: Optional[str] = None  # ELMA model folder for the PyTorch eager baseline of a bundle
    hf_qa: Optional[str] = None  # Hugging Face AutoModelForQuestionAnswering checkpoint folder, as a further baseline
    ffn_size: Optional[int] = None  # feed-forward width for the FLOPs count; None: config.json, else 4 x hidden
    progress: bool = False  # tqdm bar with running F1 and ETA on stderr
    power_source: Optional[str] = None  # elma.power source spec (tegrastats, ina3221, jtop, keysight:..., null); None: none
    power_interval_ms: int = 100  # sampling period of the power source, ms
    compare: Tuple[str, ...] = ()  # other bundles (e.g. the int8 export): their fused graph and the chosen policy
    bootstrap_resamples: int = DEFAULT_RESAMPLES  # resamples of the questions for each ratio's 95% interval
    seed: int = DEFAULT_SEED  # bootstrap seed

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1 (got {self.repeat})")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.power_interval_ms <= 0:
            raise ValueError(f"--power-interval-ms must be positive (got {self.power_interval_ms})")
        if self.bootstrap_resamples < 1:
            raise ValueError(f"--bootstrap must be >= 1 (got {self.bootstrap_resamples})")


def load_examples(data: str, limit: Optional[int]) -> List[Example]:
    """The questions to run: the file validated (DataError on anything that is not a usable SQuAD file)."""
    examples = load_squad(Path(data))
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise DataError(f"{data}: no questions to run")
    return examples


# ---- configurations ----------------------------------------------------------------------------------------


def build_configs(cfg: BenchConfig, rt, dims: ModelDims, backend: Optional[str], need_every_exit: bool,
                  front_specs: Sequence[str], stack: contextlib.ExitStack, notes: List[str], stage) -> List[Configuration]:
    """The chosen policy first, then its baselines, in report order. Runtimes opened here close with ``stack``."""
    from elma.runtime.engine import Runtime

    policy = rt.policy
    flops = RuntimeFlops(rt, dims)
    out: List[Configuration] = [PolicyConfig(rt, policy, f"policy {policy.spec}", "policy", flops)]
    if cfg.baselines:
        out.append(PolicyConfig(rt, "none", CHAIN, "chain", flops))
        out.append(FusedConfig(rt, f"fused graph {precision_label(rt)}", "fused", flops))
    if need_every_exit:
        out.append(PolicyConfig(rt, EveryExitFullDepth(), EVERY_EXIT, "chain-every-exit", flops))
    if cfg.baselines:
        for path in cfg.compare:
            stage(f"opening --compare {path}")
            other = Runtime.open(path, backend=backend, policy=policy)
            stack.callback(other.close)
            label = f"{precision_label(other)} ({Path(path).name})"
            other_flops = RuntimeFlops(other, model_dims(other, None, None))
            out.append(FusedConfig(other, f"fused graph {label}", "compare-fused", other_flops))
            if policy.spec != "none":
                out.append(PolicyConfig(other, policy, f"policy {policy.spec}, bundle {label}", "compare-policy",
                                        other_flops))
        out += _torch_configs(cfg, rt, flops, notes, stage)
    for spec in front_specs:
        out.append(PolicyConfig(rt, spec, f"front {spec}", "front", flops))
    return out


def _torch_configs(cfg: BenchConfig, rt, flops: RuntimeFlops, notes: List[str], stage) -> List[Configuration]:
    out: List[Configuration] = []
    torch_model = cfg.torch_model or (str(rt.info.path) if rt.info.kind == "model" else None)
    if torch_model is None:
        found = source_model_folder(rt)
        torch_model = str(found) if found else None
        if found:
            notes.append(f"PyTorch eager runs {found}, the model folder the bundle's manifest records (weights checked)")
    if torch_model:
        stage("loading the PyTorch eager baseline")
        try:
            out.append(TorchEagerConfig(torch_model, rt, flops))
        except ImportError as err:
            notes.append(f"PyTorch eager baseline skipped: {err}")
    else:
        notes.append("PyTorch eager baseline skipped: the bundle's source model folder was not found "
                     "(pass --torch-model MODEL_FOLDER)")
    if cfg.hf_qa:
        stage("loading the transformers AutoModelForQuestionAnswering baseline")
        try:
            out.append(HfQaConfig(cfg.hf_qa, rt.info.windows))
        except ImportError as err:
            notes.append(f"transformers QA baseline skipped: {err}")
    else:
        notes.append("no transformers AutoModelForQuestionAnswering baseline: pass --hf-qa CHECKPOINT (an ELMA model "
                     "is multi-exit, not an HF QA checkpoint)")
    if out:
        notes.append("the PyTorch eager baselines run with oneDNN off (MKL GEMM): its per-shape primitive cache grows "
                     "memory over a run, at the same speed off (elma.bench.configs.onednn)")
    return out


# ---- the run ----------------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, examples: Optional[List[Example]] = None,
              on_stage: Optional[Callable[[str], None]] = None, meter=None, sampler=None) -> BenchRun:
    """Run the benchmark ``cfg`` describes (see the module docstring).

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
    rss: Dict[str, Optional[float]] = {}

    peak_before = measure_matmul_peak()  # before and after the run: the better one is this machine's peak
    stage("loading the model")
    t0 = time.perf_counter()
    rt = Runtime.open(cfg.model, backend=backend, policy=cfg.policy)
    load_ms = (time.perf_counter() - t0) * 1e3
    with contextlib.ExitStack() as stack:
        stack.callback(rt.close)
        L, policy = rt.num_layers, rt.policy
        dims = model_dims(rt, cfg.torch_model, cfg.ffn_size)
        rss["loaded"] = peak_rss_mb()

        record, settings, front, fractions = _record(cfg, rt, examples, stage, rss)
        configs = build_configs(cfg, rt, dims, backend, record is not None, front, stack, notes, stage)
        for c in configs:
            stack.callback(c.close)
        schedule, energy = _time(cfg, configs, examples, stage, policy.spec, notes, meter, sampler)
        configs = schedule.configs
        rss["timed"] = peak_rss_mb()
        stage("summarising: metrics, simulated rows, sweep latencies, bootstrap intervals, roofline")

        first = [[replace(r, flops=float(c.flops(ex, r)), token_layers=r.token_layers or c.token_layers(ex, r.window_layers))
                  for r, ex in zip(rows, examples)] for c, rows in zip(configs, schedule.results[0])]
        paired = [np.mean([[r.latency_ms for r in rnd[i]] for rnd in schedule.results], axis=0) for i in range(len(configs))]
        rows = [summarise(c.name, c.kind, "measured", examples, res, c.num_layers, None) for c, res in zip(configs, first)]
        simulated: List[Tuple[ConfigResult, np.ndarray]] = []
        sweep_points: List[SweepPoint] = []
        record_bytes = record.nbytes if record is not None else 0
        if record is not None:
            simulated, sweep_points = _simulated(cfg, record, settings, configs, first, rows, examples, fractions)
            notes.append(f"sweep record: {record_bytes / 1e6:.2f} MB for {record.questions} questions "
                         f"({record_bytes / record.questions:.0f} bytes per question)")
        del record, settings
        reference, rows, simulated_rows = _with_ratios(cfg, configs, paired, rows, simulated, notes)
        result, baselines = rows[0], rows[1:] + simulated_rows
        policy_rounds = [rnd[0] for rnd in schedule.results]
        means = [float(np.mean([r.latency_ms for r in p])) for p in policy_rounds]
        repeats = RepeatStats(cfg.repeat, means, min(means), statistics.median(means), max(means),
                              [1e3 / m for m in means], all(same_outcomes(policy_rounds[0], p) for p in policy_rounds[1:]))

        peak = max(peak_before, measure_matmul_peak(), key=lambda m: m.gflops_per_s)
        roof_rows = [roofline_row(c.name, c.mean_gflops_per_question * 1e9, c.latency.mean_ms, peak)
                     for c in [result, *baselines] if c.mean_gflops_per_question > 0]
        tokens = [t for ex in examples for t in configs[0].window_tokens(ex)]  # cached by the FLOPs count
        roof = Roofline(peak, dims.hidden_size, dims.ffn_size, dims.ffn_source, float(np.mean(tokens)), roof_rows)
        rss["end"] = peak_rss_mb()
        n_windows = sum(len(r.window_layers) for r in first[0])
        report = BenchReport(machine_info(), versions(), asdict(cfg), rt.info.kind, rt.backend.describe(), policy.spec, L,
                             len(examples), n_windows, load_ms, rss["timed"], rss["end"], result, repeats,
                             baselines, sweep_points, roof, energy, notes, True,
                             reference, rss, record_bytes, rt.policy_source)
        policy_first = first[0]
    return BenchRun(report, {r.qid: r.prediction for r in policy_first}, {r.qid: r.na_prob for r in policy_first},
                    policy_first)


def _record(cfg: BenchConfig, rt, examples: Sequence[Example], stage, rss: Dict[str, Optional[float]]):
    """With baselines or a sweep: the compact record of every exit, the simulated sweep settings, and the front
    settings to time (``--measure-front``); with ``sweep_skim``, one more recording pass per skim setting, whose
    settings join the sweep. Returns (record or None, settings, front specs, skim -> token fractions)."""
    if not (cfg.baselines or cfg.sweep):
        return None, [], [], {}
    from elma.bench import sweep as sw

    stage(f"recording every exit of {len(examples)} questions, one at a time (for the simulated rows)")
    record = sw.record_exits(rt, examples)
    rss["recorded"] = peak_rss_mb()
    settings, front, fractions = [], [], {}
    if cfg.sweep:
        settings = sw.simulate_grid(record, on_policy=lambda name: stage(f"sweep: {name}"))
        for skim in cfg.sweep_skim:
            stage(f"recording every exit of {len(examples)} questions with {skim} (sweep)")
            skimmed = sw.record_exits(rt, examples, skim=skim)
            settings += sw.simulate_grid(skimmed, on_policy=lambda name: stage(f"sweep: {name}"))
            fractions[skimmed.skim] = sw.token_fraction(skimmed, record)
        front = sw.front_specs(settings) if cfg.measure_front else []
        rss["simulated"] = peak_rss_mb()
    return record, settings, front, fractions


def _time(cfg: BenchConfig, configs: List[Configuration], examples: Sequence[Example], stage, spec: str,
          notes: List[str], meter, sampler):
    """Warm up (dropping what cannot run), then time every configuration interleaved under the power hook.
    Returns (the schedule, energy per round or None)."""
    from elma.bench.schedule import run_interleaved, warm_up

    stage(f"warm-up: {min(max(1, cfg.warmup), len(examples))} questions through {len(configs)} configurations, untimed")
    configs, dropped = warm_up(configs, examples, cfg.warmup)
    notes += [f"{name} not run: {why}" for name, why in dropped]
    if not configs or configs[0].kind != "policy":
        raise ValueError(f"the chosen policy cannot run here: {dropped[0][1] if dropped else 'no configuration'}")
    with power_sampler(cfg.power_source, cfg.power_interval_ms, meter, sampler) as live:
        windows = RoundWindows(live)

        def on_round(r: int, event: str) -> None:
            if event == "begin":
                stage(f"timed pass {r + 1}/{cfg.repeat}: {spec}" + (f", {len(configs)} configurations interleaved question "
                                                                      f"by question" if len(configs) > 1 else ""))
            windows(r, event)

        schedule = run_interleaved(configs, examples, cfg.repeat, windows.clock, cfg.progress, on_round)
        return schedule, windows.stats(cfg.power_interval_ms, len(examples) * len(configs))


def _simulated(cfg: BenchConfig, record, settings, configs: List[Configuration], first, rows: List[ConfigResult],
               examples: Sequence[Example], fractions=None) -> Tuple[List[Tuple[ConfigResult, np.ndarray]], List[SweepPoint]]:
    """``static:k`` rows (with their per-question simulated ms), the chosen policy without its skim stages when it
    has any, and the sweep points, their latency simulated from the timed every-exit chain of round 1."""
    from elma.bench import sweep as sw

    kinds = [c.kind for c in configs]
    if "chain-every-exit" not in kinds:
        return [], []
    every = first[kinds.index("chain-every-exit")]
    layer_ms = np.array([r.layer_latency_ms for r in every], dtype=np.float64)  # (Q, L)
    other_ms = np.array([r.latency_ms for r in every], dtype=np.float64) - layer_ms.sum(axis=1)  # (Q,)
    out = []
    if cfg.baselines:
        for k in range(1, record.num_layers + 1):
            sim = sw.simulate(record, sw.StaticPolicy(k))
            ms = sw.simulated_latency_ms(sim.exit_layer, other_ms, layer_ms)
            res = sw.question_results(record, sim, examples, ms, [0.0] * len(examples))
            res = [replace(r, flops=float(configs[0].flops(ex, r))) for r, ex in zip(res, examples)]
            out.append((summarise(f"static:{k}", "static", "simulated", examples, res, record.num_layers, None), ms))
        policy = configs[0].policy
        if policy.skim_stages:  # the same exits without skimming: what skimming saves, in token-layers and F1
            sim = sw.simulate(record, policy.exit_policy)
            ms = sw.simulated_latency_ms(sim.exit_layer, other_ms, layer_ms)
            res = sw.question_results(record, sim, examples, ms, [0.0] * len(examples))
            res = [replace(r, flops=float(configs[0].flops(ex, r))) for r, ex in zip(res, examples)]
            out.append((summarise(f"policy {policy.exit_policy.spec} (no skimming)", "no-skim", "simulated", examples,
                                  res, record.num_layers, None), ms))
    points: List[SweepPoint] = []
    if settings:
        measured = {c.name[len("front "):]: (rows[i].latency.mean_ms, rows[i].metrics["f1"])
                    for i, c in enumerate(configs) if c.kind == "front"}
        points = sw.sweep_points(settings, other_ms, layer_ms, measured, fractions)
    return out, points


def _with_ratios(cfg: BenchConfig, configs: List[Configuration], paired: List[np.ndarray], rows: List[ConfigResult],
                 simulated: List[Tuple[ConfigResult, np.ndarray]], notes: List[str]):
    """Every row's speed-up against the fused graph (else the chain) and the chain, with bootstrap intervals.
    ``paired``: per configuration, per question latency averaged over the rounds. Returns (reference name, rows,
    simulated rows)."""
    kinds = [c.kind for c in configs]
    refs = [k for k in ("fused", "chain") if k in kinds]
    if cfg.baselines and "fused" not in refs:
        notes.append(f"no fused graph row: ratios are against the {CHAIN}")

    def add(row: ConfigResult, ms: np.ndarray) -> ConfigResult:
        return replace(row, ratios=[ratio_ci(paired[kinds.index(k)], ms, configs[kinds.index(k)].name,
                                             cfg.bootstrap_resamples, cfg.seed) for k in refs])

    reference = configs[kinds.index(refs[0])].name if refs else ""
    return reference, [add(r, ms) for r, ms in zip(rows, paired)], [add(r, ms) for r, ms in simulated]
