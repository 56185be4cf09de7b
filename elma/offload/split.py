"""Learning where to split: how many layers the device runs before it offloads an unsolved question.

A device adapted from SplitEE (Bajpai et al., 2023) to early-exit QA. The arms are split layers ``s`` in
``1..L``. Under split ``s`` the device runs layers 1..s with its exit policy (it answers locally at the first layer
where the policy is confident); a question still unsolved after layer ``s`` goes to the offload server, which answers
it with the full model. Split ``L`` never offloads: the device then holds the full-depth answer itself.

    bandit = SplitBandit(num_layers=6, mu=MU, exploration=EXPLORATION)
    s = bandit.choose()                                   # UCB1
    ... run to s, answer or offload ...
    bandit.update(s, observation(s, 6, layers_run, local_exit, confidence))
    bandit.costs.add(step_ms=answer.layer_latency_ms, offload_ms=result.offload_ms)   # measured costs
    save_state(path, bandit, fingerprint)

**Reward** of one question under a split, in [0, 1]:
``(utility - mu * cost / max_cost + mu) / (1 + mu)``, where ``utility`` is the chance that the answer given is the
full model's: 1 when it is (offloaded, or answered at the last layer), else the exit confidence (``Answer.
exit_confidence``, the smaller of the start and end maximum probability), and ``cost`` the device's time: the
layers it ran plus, when offloaded, the offload round trip (``SplitCosts``, in ms; ``max_cost`` runs every layer and
offloads). SplitEE weighs the final exit's confidence the same way against ``mu`` times the cost.

**Side observations.** Playing ``s`` shows the reward of every split ``j <= s`` too: the device has seen the policy
decline every layer before the one it stopped at. If it answered locally at layer ``k <= s``, every split ``j < k``
would have offloaded after ``j`` layers and every split ``k <= j <= s`` would have answered at ``k``; if it
offloaded, every split ``j <= s`` would have offloaded after ``j`` layers. ``observation`` builds that, and
``update`` adds it to every arm it covers (UCB1 with side observations: the counts grow faster than the plays).
Deeper splits are not credited even when an early exit reveals them (every ``j >= k`` would have answered at
``k``): they would be observed only on the questions that exit early, and their means would be biased upwards.

**Costs are measured**, not assumed: ``CostModel`` keeps the running mean of each layer's step time and of the
offload round trip. Rewards are kept as sufficient statistics (per arm: utility sum, counts of layers run and of
offloads), so every arm's mean reward is exact under the latest cost estimates.

**State** persists as JSON (``save_state`` writes a temporary file and renames it; ``load_state`` reads it), one file
per model fingerprint on the device. A file that is not a valid state is refused with one line (``SplitStateError``,
naming the file and the fix: remove it to learn afresh); nothing is silently discarded. Two processes learning into
one file at once: the last writer wins (an update may be lost, never the file).

Device side: Python 3.6 and the standard library only.
"""

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from elma.errors import DataError
from elma.fsutil import atomic_write

STATE_VERSION = 1
# Fixed on the held-out split (benchmarks/split_bandit_sim.py tune, heldout-short.json), never on dev: see
# docs/offload-split.md.
DEFAULT_MU = 0.5
DEFAULT_EXPLORATION = 0.05


class SplitStateError(DataError):
    """The split bandit's state file cannot be used (exit status 2 in the CLIs, as bad input data)."""


@dataclass(frozen=True)
class Sample:
    """What one question under one split gave (all a reward needs)."""

    layers_run: int  # layers the device ran, 1..L
    offloaded: bool  # the server answered (full model)
    confidence: Optional[float]  # exit confidence of a local answer; None when offloaded


@dataclass(frozen=True)
class SplitCosts:
    """The device's cost of a split, in ms (or mJ: any one unit)."""

    layer_ms: Tuple[float, ...]  # cumulative: layer_ms[k-1] is the cost of running layers 1..k
    offload_ms: float  # one offload round trip (request, server, reply)

    def __post_init__(self) -> None:
        if not self.layer_ms or any(not math.isfinite(v) or v < 0 for v in self.layer_ms) \
                or not math.isfinite(self.offload_ms) or self.offload_ms < 0:
            raise ValueError(f"costs must be finite and not negative (got layer_ms={self.layer_ms}, offload_ms={self.offload_ms})")

    @property
    def max_ms(self) -> float:
        """Every layer run, then offloaded: no question costs more."""
        return max(self.layer_ms[-1] + self.offload_ms, 1e-9)

    def local_ms(self, layers: int) -> float:
        return self.layer_ms[layers - 1]

    def cost_ms(self, sample: Sample) -> float:
        return self.local_ms(sample.layers_run) + (self.offload_ms if sample.offloaded else 0.0)

    def reward(self, layers_run: int, offloaded: bool, confidence: Optional[float], mu: float) -> float:
        """The reward in [0, 1] (see the module docstring)."""
        num_layers = len(self.layer_ms)
        utility = 1.0 if offloaded or layers_run == num_layers or confidence is None else min(max(confidence, 0.0), 1.0)
        cost = self.local_ms(layers_run) + (self.offload_ms if offloaded else 0.0)
        return (utility - mu * cost / self.max_ms + mu) / (1.0 + mu)


def observation(split: int, num_layers: int, layers_run: int, local_exit: Optional[int],
                confidence: Optional[float]) -> Dict[int, Sample]:
    """Every arm's sample that one question under ``split`` reveals (see "Side observations").

    Args:
        split: the split played, 1..num_layers.
        layers_run: layers the device ran.
        local_exit: the layer of the local answer (the policy was confident there, or ``split == num_layers``);
            None when the question was offloaded.
        confidence: exit confidence of the local answer (ignored when offloaded).
    """
    if not 1 <= split <= num_layers:
        raise ValueError(f"split must be in 1..{num_layers} (got {split})")
    if local_exit is None:
        if split == num_layers:
            raise ValueError(f"split {split} is the last layer: the device answers, nothing is offloaded")
        if layers_run != split:
            raise ValueError(f"an offloaded question ran to its split {split} (got {layers_run} layers)")
        return {j: Sample(j, True, None) for j in range(1, split + 1)}
    if not 1 <= local_exit <= split or layers_run != local_exit:
        raise ValueError(f"a local answer exits at a layer in 1..{split} and runs to it (got exit {local_exit}, {layers_run} layers)")
    seen = {j: Sample(j, True, None) for j in range(1, local_exit)}
    seen.update({j: Sample(local_exit, False, confidence) for j in range(local_exit, split + 1)})
    return seen


class CostModel:
    """Running means of the measured step time of each layer and of the offload round trip."""

    def __init__(self, num_layers: int, step_ms: Optional[Sequence[float]] = None, offload_ms: Optional[float] = None):
        self.num_layers = num_layers
        self.step_sum_ms = [0.0] * num_layers
        self.step_n = [0] * num_layers
        self.offload_sum_ms = 0.0
        self.offload_n = 0
        self.prior_step_ms = list(step_ms) if step_ms is not None else [1.0] * num_layers  # before any measurement
        self.prior_offload_ms = offload_ms if offload_ms is not None else 100.0
        if len(self.prior_step_ms) != num_layers:
            raise ValueError(f"step_ms needs one value per layer ({num_layers}; got {len(self.prior_step_ms)})")

    def add(self, step_ms: Sequence[float] = (), offload_ms: Optional[float] = None) -> None:
        """Add measured step times (``step_ms[l]``: layer ``l + 1``) and, when the question went out, its round trip."""
        for layer, ms in enumerate(list(step_ms)[:self.num_layers]):
            if math.isfinite(ms) and ms >= 0:
                self.step_sum_ms[layer] += ms
                self.step_n[layer] += 1
        if offload_ms is not None and math.isfinite(offload_ms) and offload_ms >= 0:
            self.offload_sum_ms += offload_ms
            self.offload_n += 1

    def costs(self) -> SplitCosts:
        steps = [s / n if n else p for s, n, p in zip(self.step_sum_ms, self.step_n, self.prior_step_ms)]
        cumulative, total = [], 0.0
        for ms in steps:
            total += ms
            cumulative.append(total)
        offload = self.offload_sum_ms / self.offload_n if self.offload_n else self.prior_offload_ms
        return SplitCosts(tuple(cumulative), offload)

    def to_dict(self) -> dict:
        return {"step_sum_ms": self.step_sum_ms, "step_n": self.step_n, "offload_sum_ms": self.offload_sum_ms,
                "offload_n": self.offload_n, "prior_step_ms": self.prior_step_ms,
                "prior_offload_ms": self.prior_offload_ms}

    @classmethod
    def from_dict(cls, num_layers: int, d: dict) -> "CostModel":
        model = cls(num_layers, [float(v) for v in d["prior_step_ms"]], float(d["prior_offload_ms"]))
        model.step_sum_ms = [float(v) for v in d["step_sum_ms"]]
        model.step_n = [int(v) for v in d["step_n"]]
        model.offload_sum_ms = float(d["offload_sum_ms"])
        model.offload_n = int(d["offload_n"])
        if len(model.step_sum_ms) != num_layers or len(model.step_n) != num_layers:
            raise ValueError(f"cost model has {len(model.step_n)} layers, expected {num_layers}")
        return model


class _Fixed:
    """Costs that never change (the simulation's measured figures)."""

    def __init__(self, costs: SplitCosts):
        self._costs = costs

    def costs(self) -> SplitCosts:
        return self._costs

    def add(self, step_ms: Sequence[float] = (), offload_ms: Optional[float] = None) -> None:
        pass


class SplitBandit:
    """UCB1 over split layers 1..L with side observations.

    ``choose`` plays every arm not yet observed (the shallowest first), then the arm with the highest
    ``mean reward + exploration * (1 + mu) * sqrt(2 ln t / n_arm)``, ``t`` the questions seen and ``n_arm`` the
    samples the arm has (side observations included). ``exploration = 1`` is UCB1's own bound on [0, 1] rewards
    (the ``1 + mu`` undoes the reward's scaling, so that the bound is in units of utility).
    """

    def __init__(self, num_layers: int, mu: float = DEFAULT_MU, exploration: float = DEFAULT_EXPLORATION,
                 costs=None):
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1 (got {num_layers})")
        if not (math.isfinite(mu) and mu >= 0 and math.isfinite(exploration) and exploration >= 0):
            raise ValueError(f"mu and exploration must be finite and not negative (got {mu}, {exploration})")
        self.num_layers = num_layers
        self.mu = float(mu)
        self.exploration = float(exploration)
        if costs is None:
            costs = CostModel(num_layers)
        elif isinstance(costs, SplitCosts):
            if len(costs.layer_ms) != num_layers:
                raise ValueError(f"costs has {len(costs.layer_ms)} layers, the bandit {num_layers}")
            costs = _Fixed(costs)
        self.costs = costs
        self.rounds = 0  # questions seen
        self.plays = [0] * num_layers  # times each split was played
        self.n = [0] * num_layers  # samples per arm (plays and side observations)
        self.utility_sum = [0.0] * num_layers
        self.offloads = [0] * num_layers
        self.layers = [[0] * num_layers for _ in range(num_layers)]  # layers[arm][k-1]: samples that ran k layers

    # ---- the policy ----------------------------------------------------------------------------------------------

    def mean_rewards(self) -> List[Optional[float]]:
        """Each arm's mean reward under the current cost estimates (None: never observed)."""
        costs = self.costs.costs()
        out = []  # type: List[Optional[float]]
        for a in range(self.num_layers):
            if not self.n[a]:
                out.append(None)
                continue
            n = float(self.n[a])
            cost = sum(c * costs.local_ms(k + 1) for k, c in enumerate(self.layers[a])) / n \
                + self.offloads[a] / n * costs.offload_ms
            utility = self.utility_sum[a] / n
            out.append((utility - self.mu * cost / costs.max_ms + self.mu) / (1.0 + self.mu))
        return out

    def choose(self) -> int:
        """The split to play next (1-based)."""
        means = self.mean_rewards()
        for a, m in enumerate(means):
            if m is None:
                return a + 1
        t = max(self.rounds, 1)
        bonus = self.exploration * (1.0 + self.mu)
        index = [m + bonus * math.sqrt(2.0 * math.log(t) / self.n[a]) for a, m in enumerate(means)]
        return max(range(self.num_layers), key=lambda a: (index[a], -a)) + 1  # ties: the shallower split

    def best(self) -> Optional[int]:
        """The split with the highest mean reward so far (None before any sample): what the bandit exploits."""
        means = self.mean_rewards()
        seen = [a for a, m in enumerate(means) if m is not None]
        return max(seen, key=lambda a: (means[a], -a)) + 1 if seen else None

    def update(self, played: int, samples: Dict[int, Sample]) -> None:
        """Add one question's samples (``observation``) to every arm they cover; ``played`` must be among them."""
        if played not in samples:
            raise ValueError(f"the samples must include the played split {played} (got {sorted(samples)})")
        for arm, s in samples.items():
            if not 1 <= arm <= self.num_layers or not 1 <= s.layers_run <= self.num_layers:
                raise ValueError(f"arm {arm} / layers {s.layers_run} outside 1..{self.num_layers}")
        self.rounds += 1
        self.plays[played - 1] += 1
        for arm, s in samples.items():
            a = arm - 1
            utility = 1.0 if s.offloaded or s.layers_run == self.num_layers or s.confidence is None \
                else min(max(float(s.confidence), 0.0), 1.0)
            self.n[a] += 1
            self.utility_sum[a] += utility
            self.offloads[a] += int(s.offloaded)
            self.layers[a][s.layers_run - 1] += 1

    # ---- state ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = {"num_layers": self.num_layers, "mu": self.mu, "exploration": self.exploration, "rounds": self.rounds,
             "plays": self.plays, "n": self.n, "utility_sum": self.utility_sum, "offloads": self.offloads,
             "layers": self.layers}
        if isinstance(self.costs, CostModel):
            d["costs"] = self.costs.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SplitBandit":
        L = int(d["num_layers"])
        costs = CostModel.from_dict(L, d["costs"]) if "costs" in d else None
        b = cls(L, float(d["mu"]), float(d["exploration"]), costs)
        b.rounds = int(d["rounds"])
        b.plays = [int(v) for v in d["plays"]]
        b.n = [int(v) for v in d["n"]]
        b.utility_sum = [float(v) for v in d["utility_sum"]]
        b.offloads = [int(v) for v in d["offloads"]]
        b.layers = [[int(v) for v in row] for row in d["layers"]]
        if any(len(x) != L for x in (b.plays, b.n, b.utility_sum, b.offloads, b.layers)) \
                or any(len(row) != L for row in b.layers) or min(b.n + b.plays + b.offloads + [b.rounds]) < 0:
            raise ValueError(f"per-arm lists do not all have {L} entries of counts")
        return b


def save_state(path, bandit: SplitBandit, fingerprint: str) -> None:
    """Write the bandit's state to ``path`` atomically (temporary file, then rename), creating its folder."""
    state = {"format": "elma-split-bandit", "version": STATE_VERSION, "fingerprint": fingerprint,
             "bandit": bandit.to_dict()}
    folder = os.path.dirname(os.path.abspath(str(path)))
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(state, indent=1)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def load_state(path, fingerprint: str, num_layers: int) -> Optional[SplitBandit]:
    """The bandit saved at ``path`` for this model, or None when there is no file yet.

    Raises:
        SplitStateError: the file is unreadable, not a split state, or belongs to another model (one line, with
            the fix: remove the file to learn afresh, or pass another state file).
    """
    if not os.path.exists(str(path)):
        return None
    fix = "remove it to learn afresh"
    try:
        with open(str(path), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SplitStateError(f"{path}: not a readable split state ({str(err).splitlines()[0]}); {fix}") \
            from err
    if not isinstance(state, dict) or state.get("format") != "elma-split-bandit":
        raise SplitStateError(f"{path}: not a split state file; {fix}")
    if state.get("version") != STATE_VERSION:
        raise SplitStateError("{}: split state version {} (this ELMA reads {}); {}".format(
            path, state.get("version"), STATE_VERSION, fix))
    if state.get("fingerprint") != fingerprint:
        raise SplitStateError("{}: learnt for another model (fingerprint {}, this model {}); {}, or give another "
                              "--split-state".format(path, state.get("fingerprint"), fingerprint, fix))
    try:
        bandit = SplitBandit.from_dict(state["bandit"])
    except (KeyError, TypeError, ValueError) as err:
        raise SplitStateError(f"{path}: damaged split state ({type(err).__name__}: {err}); {fix}") from err
    if bandit.num_layers != num_layers:
        raise SplitStateError(f"{path}: learnt for {bandit.num_layers} layers, the model has {num_layers}; {fix}")
    return bandit
