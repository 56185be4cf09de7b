"""The interleaved timing loop: every configuration on the same question, back to back, order balanced.

Timing configurations in separate passes minutes apart lets the machine's load differ between them (two
passes of the same configuration differed by 20% on a shared 2-core machine). Here, for each question,
each configuration answers it once, one after the other, so a slow spell hits all of them alike. The order
changes per question along a Williams design (a balanced Latin square): over each cycle of orders every
configuration goes first equally often and directly follows every other one equally often, so what one
configuration leaves behind (caches, another library's spinning thread pool) is charged to all alike.
A question's latency is the ``perf_counter`` wall time of the configuration's ``answer`` call
(tokenisation to decoded answer).

Warm-up: the first ``warmup`` questions are answered by every configuration, untimed. A configuration
that cannot run here (``NotImplementedError``: its backend has no such graph; ``ImportError``: a package
is missing) is dropped at warm-up, with the reason, before anything is timed.
"""

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from elma.bench.configs import Configuration
from elma.bench.results import QuestionResult, question_f1
from elma.data.squad import Example

logger = logging.getLogger(__name__)


@dataclass
class Schedule:
    """What ``run_interleaved`` returns."""

    configs: List[Configuration]  # those that ran, in the given order
    results: List[List[List[QuestionResult]]]  # [round][config] -> per question, in question order
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (configuration, why) dropped at warm-up
    orders: List[Tuple[int, ...]] = field(default_factory=list)  # config order of each (round, question), for tests


def williams_orders(n_configs: int) -> List[Tuple[int, ...]]:
    """A Williams design for ``n`` configurations: n orders (2n when n is odd) in which each configuration is
    first equally often and each ordered pair (a directly before b) occurs equally often."""
    n = n_configs
    if n < 1:
        raise ValueError(f"need at least one configuration (got {n})")
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [tuple((c + i) % n for c in first) for i in range(n)]
    if n % 2:
        rows += [tuple(reversed(r)) for r in rows]
    return rows


def rotation(n_configs: int, step: int) -> Tuple[int, ...]:
    """The order of the configurations at ``step`` (question index across rounds): the design's rows in turn."""
    rows = williams_orders(n_configs)
    return rows[step % len(rows)]


def warm_up(configs: Sequence[Configuration], examples: Sequence[Example], warmup: int
            ) -> Tuple[List[Configuration], List[Tuple[str, str]]]:
    """Answer the first ``warmup`` questions with every configuration, untimed (at least one for the baselines);
    drop those that cannot run (see the module docstring). Returns (kept, dropped as (name, reason))."""
    kept, dropped = [], []
    for cfg in configs:
        n = warmup if cfg.kind == "policy" else max(1, warmup)  # a baseline is tried once even with warmup 0
        try:
            for ex in examples[:n]:
                cfg.answer(ex)
        except (NotImplementedError, ImportError) as err:
            logger.warning("%s: not run (%s)", cfg.name, err)
            dropped.append((cfg.name, str(err)))
            cfg.close()
            continue
        kept.append(cfg)
    return kept, dropped


def run_interleaved(configs: Sequence[Configuration], examples: Sequence[Example], rounds: int = 1,
                    clock: Callable[[], float] = time.monotonic, progress: bool = False,
                    on_round: Optional[Callable[[int, str], None]] = None) -> Schedule:
    """Time every configuration on every question, round-robin (see the module docstring).

    Args:
        configs: warmed-up configurations.
        rounds: passes over the questions (each interleaved); round 1's answers are the report's.
        clock: stamps each question's ``start_s``/``end_s`` (the power sampler's clock, for energy windows).
        on_round: called with (round index, "begin" or "end") around each round (energy windows).
    """
    if not configs:
        raise ValueError("no configuration to time")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    n = len(configs)
    out = Schedule(list(configs), [])
    orders = williams_orders(n)
    bar = _progress(len(examples) * rounds, f"{n} configurations, interleaved", progress)
    f1_sum = 0.0
    try:
        for r in range(rounds):
            if on_round is not None:
                on_round(r, "begin")
            per_config: List[List[QuestionResult]] = [[] for _ in configs]
            for qi, ex in enumerate(examples):
                order = orders[(r * len(examples) + qi) % len(orders)]
                out.orders.append(order)
                for c in order:
                    cfg = configs[c]
                    start_s = clock()
                    t0 = time.perf_counter()
                    o = cfg.answer(ex)
                    t1 = time.perf_counter()
                    end_s = clock()
                    per_config[c].append(QuestionResult(ex.qid, o.prediction, o.na_prob, o.exit_layer, o.window_layers,
                                                        (t1 - t0) * 1e3, o.layer_latency_ms, o.unsolved, start_s, end_s,
                                                        token_layers=o.token_layers))
                if bar is not None:
                    f1_sum += question_f1(ex.answer_texts, per_config[0][-1].prediction)
                    bar.update(1)
                    bar.set_postfix(F1=f"{100 * f1_sum / (r * len(examples) + qi + 1):.1f}", refresh=False)
            if on_round is not None:
                on_round(r, "end")
            out.results.append(per_config)
    finally:
        if bar is not None:
            bar.close()
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
