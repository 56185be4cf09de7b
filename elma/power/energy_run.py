"""``elma-energy``'s measurement: two benchmark passes (early exit, full depth) under one power sampler.

One ``PowerSampler`` runs from before the first model load to after the second pass. ``run_bench`` runs
twice on it with fast settings (one timed pass, no sweep, no baselines): once with the early-exit policy
(``--policy`` or the model's calibrated default), once at full depth (policy ``none``, the runtime's
``NoExitPolicy``). The windows are measured afterwards from the whole trace (``elma.power.energy_figures``).
"""

import logging
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

from elma.power.integrate import PowerTrace
from elma.power.rails import TotalRule
from elma.power.sources import PowerConfig

logger = logging.getLogger(__name__)

EARLY, FULL = "early", "full"
FULL_DEPTH_POLICY = "none"  # the runtime's NoExitPolicy: every layer runs


@dataclass(frozen=True)
class EnergyConfig:
    """``elma-energy`` settings; CLI flags map 1:1 onto these fields."""

    model: str  # bundle folder or ELMA model folder
    data: str  # SQuAD 1.1/2.0 JSON
    power: PowerConfig  # the source (``power.source``) and how it is sampled
    policy: Optional[str] = None  # early-exit pass policy; None: the model's calibrated default (elma.runtime.defaults)
    backend: Optional[str] = None  # onnxruntime (bundles, default), tensorrt, torch (model folders)
    limit: Optional[int] = None  # first N questions of the file; None: all
    warmup: int = 8  # questions answered untimed before each timed pass
    progress: bool = False  # tqdm bar (its redraws fall inside the pass window, so off by default)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0 (got {self.warmup})")


@dataclass
class EnergyRun:
    """What ``run_energy`` returns: both benchmark runs and the whole power trace."""

    config: EnergyConfig
    source: str  # PowerMeter.describe()
    trace: PowerTrace  # every kept sample and every gap (the open one closed at stop)
    started_s: float  # sampler start, on its clock
    stopped_s: float  # sampler stop
    runs: Dict[str, object]  # EARLY / FULL -> elma.bench.runner.BenchRun
    total_rule: Optional[TotalRule] = None  # the meter's own board-total rule (bench supply: sum of channels); None: per device
    dropped_samples: int = 0
    failures: int = 0  # failed reads and failed reopenings of the source


# ---- the run ------------------------------------------------------------------------------------------------


def run_energy(cfg: EnergyConfig, examples=None, meter=None, on_stage: Optional[Callable[[str], None]] = None) -> EnergyRun:
    """Open the power source, then run the early-exit and the full-depth benchmark passes under it.

    Args:
        examples: the questions (already loaded and limited); None loads ``cfg.data``.
        meter: a ``PowerMeter`` to use instead of ``cfg.power.source`` (tests inject fakes).
        on_stage: called with each stage's name as it starts.

    Raises:
        ValueError: an unknown source specification, or a bad policy.
        PowerMeterUnavailable: the source cannot be opened (raised before any model is loaded).
        DataError, BundleError, ModelLoadError: as ``run_bench``.
    """
    from elma.bench.runner import BenchConfig, load_examples, run_bench
    from elma.power.sampler import PowerSampler
    from elma.power.sources import open_meter

    stage = on_stage or (lambda s: logger.info("%s", s))
    if examples is None:
        examples = load_examples(cfg.data, cfg.limit)
    if meter is None:
        meter = open_meter(cfg.power)
    sampler = PowerSampler(meter, interval_s=cfg.power.interval_ms / 1e3, max_samples=cfg.power.max_samples,
                           retry_s=cfg.power.retry_s)
    sampler.start()  # PowerMeterUnavailable here: nothing has run, nothing is written
    stage(f"power source: {meter.describe()}")
    bench = BenchConfig(model=cfg.model, data=cfg.data, policy=cfg.policy, backend=cfg.backend, limit=cfg.limit,
                        warmup=cfg.warmup, baselines=False, sweep=False, progress=cfg.progress,
                        power_interval_ms=cfg.power.interval_ms)
    runs: Dict[str, object] = {}
    try:
        for name, bench_cfg in ((EARLY, bench), (FULL, replace(bench, policy=FULL_DEPTH_POLICY))):
            stage(f"{name} pass")
            runs[name] = run_bench(bench_cfg, examples, on_stage=stage, sampler=sampler)
    finally:
        stopped_s = sampler.clock()
        sampler.stop()
    return EnergyRun(cfg, meter.describe(), sampler.trace(), sampler.started_s, stopped_s, runs,
                     total_rule=getattr(meter, "total_rule", None), dropped_samples=sampler.dropped_samples,
                     failures=sampler.failures)
