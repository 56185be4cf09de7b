"""Exit policies: after each layer, decide from that exit's logits whether to stop.

Every policy is a frozen dataclass with no engine, clock or I/O. What a policy
must remember between layers of one question (PABEE's counter, the previous
layer's logits) is returned in ``ExitDecision.state`` and handed back by the
runtime at the next layer, so one policy object serves any number of questions
and threads at once.

    policy = parse_policy("entropy:0.4,0.4")
    state = None
    for layer in range(1, L + 1):
        d = policy.decide(layer, start, end, mask, state)
        if d.exit: break
        state = d.state

``mask`` marks the positions of the answer distribution: CLS (no answer) and
the context tokens.

Skimming (``elma.runtime.skim``) composes with any policy in one spec:
``entropy:2.4,2.9+skim:2,0.001`` exits by entropy and drops ruled-out context
tokens after layer 2 (``none+skim:2,0.001``: skimming alone). ``parse_policy``
reads both; the result is a ``SkimmingPolicy`` whose decisions are its exit
policy's, and whose ``skim_stage(layer)`` tells the runtime where to skim.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from elma.runtime.skim import SkimStage
from elma.runtime.spans import decode_spans
from elma.runtime.stats import entropy, kl_divergence, max_prob


@dataclass(frozen=True)
class ExitDecision:
    exit: bool
    score: float  # the statistic the policy compared (see each policy)
    reason: str  # one line a person can read
    state: Any = None  # hand back at the next layer of the same question


class ExitPolicy:
    """Base class: ``decide`` is a pure function of its arguments."""

    name = "base"

    def decide(self, layer: int, start_logits: np.ndarray, end_logits: np.ndarray,
               mask: Optional[np.ndarray] = None, state: Any = None) -> ExitDecision:
        """Decide after ``layer`` (1-based) from its (T,) start and end logits."""
        raise NotImplementedError

    def reads_exit(self, layer: int) -> bool:
        """Whether ``decide`` looks at exit ``layer``'s logits; where it does not, the runtime skips that head."""
        return True

    def skim_stage(self, layer: int) -> Optional[SkimStage]:
        """The skim stage that runs after ``layer``, if any (see ``SkimmingPolicy``)."""
        return None

    @property
    def skim_stages(self) -> Tuple[SkimStage, ...]:
        return ()

    @property
    def exit_policy(self) -> "ExitPolicy":
        """The policy that decides exits (itself, unless skimming is composed with it)."""
        return self

    @property
    def spec(self) -> str:
        """The string ``parse_policy`` turns back into this policy."""
        raise NotImplementedError


@dataclass(frozen=True)
class EntropyPolicy(ExitPolicy):
    """Exit when the entropy of the start and of the end distribution are each under their threshold.

    The seed thesis' rule with thresholds ``[E_start, E_end]`` in nats. ``score`` is the larger
    of ``H_start - E_start`` and ``H_end - E_end``: negative exactly when the policy exits.
    """

    start_threshold: float
    end_threshold: float
    name = "entropy"

    def __post_init__(self) -> None:
        if self.start_threshold < 0 or self.end_threshold < 0:
            raise ValueError(f"entropy thresholds must be >= 0 (got {self.start_threshold}, {self.end_threshold})")

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        h_start = float(entropy(start_logits, mask))
        h_end = float(entropy(end_logits, mask))
        ok = h_start < self.start_threshold and h_end < self.end_threshold
        margin = max(h_start - self.start_threshold, h_end - self.end_threshold)
        return ExitDecision(ok, margin, f"entropy start {h_start:.3f} end {h_end:.3f} vs "
                                        f"{self.start_threshold:g},{self.end_threshold:g}")

    @property
    def spec(self) -> str:
        return f"entropy:{self.start_threshold:g},{self.end_threshold:g}"


@dataclass(frozen=True)
class MaxProbPolicy(ExitPolicy):
    """Exit when the start and the end distribution each put at least ``threshold`` on one position.

    ``score`` is the smaller of the two maximum probabilities.
    """

    threshold: float
    name = "maxprob"

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"maxprob threshold must be in (0, 1] (got {self.threshold})")

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        p = min(float(max_prob(start_logits, mask)), float(max_prob(end_logits, mask)))
        return ExitDecision(p >= self.threshold, p, f"max prob {p:.3f} vs {self.threshold:g}")

    @property
    def spec(self) -> str:
        return f"maxprob:{self.threshold:g}"


@dataclass(frozen=True)
class PatiencePolicy(ExitPolicy):
    """PABEE: exit when the decoded answer is unchanged for ``patience`` consecutive layers.

    The decoded answer is the best span of the context tokens, or "no answer" when the CLS
    score beats it. State: (previous answer, count). ``score`` is the count.
    """

    patience: int
    max_answer_len: int = 30
    name = "patience"

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 (got {self.patience})")

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        answer = decoded_answer(start_logits, end_logits, mask, self.max_answer_len)
        previous, count = state if state is not None else (None, 0)
        count = count + 1 if answer == previous else 0
        return ExitDecision(count >= self.patience, float(count),
                            f"answer {answer} unchanged for {count} layer(s), patience {self.patience}", (answer, count))

    @property
    def spec(self) -> str:
        return f"patience:{self.patience}"


def decoded_answer(start, end, mask, max_answer_len: int) -> Tuple[int, int]:
    """(start, end) token span, or (0, 0) for no answer; CLS is position 0."""
    start = np.asarray(start, dtype=np.float32)
    end = np.asarray(end, dtype=np.float32)
    ctx = np.ones(start.shape[-1], dtype=bool) if mask is None else np.array(mask, dtype=bool)
    ctx[0] = False
    spans = decode_spans(start, end, ctx, top_k=5, max_answer_len=max_answer_len)
    if not spans or float(start[0] + end[0]) > spans[0].score:
        return (0, 0)
    return (spans[0].start, spans[0].end)


SIMILARITY_VARIANTS = ("kl", "rekl", "bikl")


@dataclass(frozen=True)
class SimilarityPolicy(ExitPolicy):
    """PF-BERxiT: exit when adjacent layers' distributions stay within ``threshold`` for ``patience`` layers.

    The divergence between layer i and i-1, averaged over the start and end distributions:
    ``kl`` = KL(p_i || p_{i-1}), ``rekl`` = KL(p_{i-1} || p_i), ``bikl`` = their sum. The paper
    writes these as cross-entropies; the KL form used here is the same up to the entropy term, and
    is 0 for identical layers whatever their confidence. State: (previous logits, count).
    ``score`` is the divergence.
    """

    variant: str
    threshold: float
    patience: int = 1
    name = "similarity"

    def __post_init__(self) -> None:
        if self.variant not in SIMILARITY_VARIANTS:
            raise ValueError(f"similarity variant must be one of {', '.join(SIMILARITY_VARIANTS)} (got {self.variant!r})")
        if self.threshold < 0 or self.patience < 1:
            raise ValueError(f"similarity needs threshold >= 0 and patience >= 1 (got {self.threshold}, {self.patience})")

    def divergence(self, prev: Tuple[np.ndarray, np.ndarray], cur: Tuple[np.ndarray, np.ndarray], mask) -> float:
        parts = []
        for p_prev, p_cur in zip(prev, cur):
            forward = float(kl_divergence(p_cur, p_prev, mask)) if self.variant in ("kl", "bikl") else 0.0
            reverse = float(kl_divergence(p_prev, p_cur, mask)) if self.variant in ("rekl", "bikl") else 0.0
            parts.append(forward + reverse)
        return sum(parts) / 2

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        cur = (np.asarray(start_logits, dtype=np.float32), np.asarray(end_logits, dtype=np.float32))
        if state is None:
            return ExitDecision(False, float("inf"), "first layer: nothing to compare with", (cur, 0))
        prev, count = state
        div = self.divergence(prev, cur, mask)
        count = count + 1 if div < self.threshold else 0
        return ExitDecision(count >= self.patience, div,
                            f"{self.variant} {div:.4f} vs {self.threshold:g}, {count}/{self.patience}", (cur, count))

    @property
    def spec(self) -> str:
        return f"similarity:{self.variant},{self.threshold:g},{self.patience}"


@dataclass(frozen=True)
class StaticPolicy(ExitPolicy):
    """Always exit at layer ``layer`` (the "Appointed-Exit" baseline). ``score`` is the layer."""

    layer: int
    name = "static"

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"static exit layer must be >= 1 (got {self.layer})")

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        return ExitDecision(layer >= self.layer, float(layer), f"static exit at layer {self.layer}")

    def reads_exit(self, layer: int) -> bool:
        return layer >= self.layer

    @property
    def spec(self) -> str:
        return f"static:{self.layer}"


@dataclass(frozen=True)
class NoExitPolicy(ExitPolicy):
    """Never exit early: full depth."""

    name = "none"

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        return ExitDecision(False, float(layer), "full depth")

    def reads_exit(self, layer: int) -> bool:
        return False

    @property
    def spec(self) -> str:
        return "none"


@dataclass(frozen=True)
class SkimmingPolicy(ExitPolicy):
    """An exit policy with skim stages: ``inner`` decides every exit; after each stage's layer the runtime drops
    the context tokens that layer's exit head rules out (``elma.runtime.skim``). ``score`` is ``inner``'s."""

    inner: ExitPolicy
    stages: Tuple[SkimStage, ...]  # ascending layers, one stage per layer
    name = "skim"

    def __post_init__(self) -> None:
        if isinstance(self.inner, SkimmingPolicy) or not isinstance(self.inner, ExitPolicy):
            raise ValueError(f"skimming composes with one exit policy (got {type(self.inner).__name__})")
        layers = [s.layer for s in self.stages]
        if not layers:
            raise ValueError("a skimming policy needs at least one skim stage")
        if layers != sorted(set(layers)):
            raise ValueError(f"skim stages need distinct layers in ascending order (got layers {layers})")

    def decide(self, layer, start_logits, end_logits, mask=None, state=None) -> ExitDecision:
        return self.inner.decide(layer, start_logits, end_logits, mask, state)

    def reads_exit(self, layer: int) -> bool:
        return self.inner.reads_exit(layer)

    def skim_stage(self, layer: int) -> Optional[SkimStage]:
        return next((s for s in self.stages if s.layer == layer), None)

    @property
    def skim_stages(self) -> Tuple[SkimStage, ...]:
        return self.stages

    @property
    def exit_policy(self) -> ExitPolicy:
        return self.inner

    @property
    def spec(self) -> str:
        return "+".join([self.inner.spec] + [s.spec for s in self.stages])


def _floats(args, n_min: int, n_max: int, name: str) -> Tuple[float, ...]:
    if not n_min <= len(args) <= n_max:
        raise ValueError(f"policy {name!r} takes {n_min}-{n_max} parameter(s) (got {len(args)})")
    try:
        return tuple(float(a) for a in args)
    except ValueError as err:
        raise ValueError(f"policy {name!r}: parameters must be numbers (got {','.join(args)})") from err


def _int(value: float, what: str) -> int:
    if not np.isfinite(value) or value != int(value):
        raise ValueError(f"{what} must be a whole number (got {value:g})")
    return int(value)


def _entropy(args):
    values = _floats(args, 1, 2, "entropy")
    return EntropyPolicy(values[0], values[-1])


def _similarity(args):
    if not args:
        raise ValueError("policy 'similarity' needs a variant: similarity:bikl,THRESHOLD[,PATIENCE]")
    values = _floats(args[1:], 1, 2, "similarity")
    return SimilarityPolicy(args[0], values[0], _int(values[1], "patience") if len(values) > 1 else 1)


def _none(args):
    _floats(args, 0, 0, "none")
    return NoExitPolicy()


PARSERS: Dict[str, Any] = {
    "entropy": _entropy,
    "maxprob": lambda a: MaxProbPolicy(_floats(a, 1, 1, "maxprob")[0]),
    "patience": lambda a: PatiencePolicy(_int(_floats(a, 1, 1, "patience")[0], "patience")),
    "similarity": _similarity,
    "static": lambda a: StaticPolicy(_int(_floats(a, 1, 1, "static")[0], "static exit layer")),
    "none": _none,
}


SKIM_FORM = "skim:LAYER,THRESHOLD[,MARGIN[,SPANS]]"


def _name_args(part: str) -> Tuple[str, list]:
    name, _, rest = part.strip().partition(":")
    return name.strip(), [a.strip() for a in rest.split(",")] if rest.strip() else []


def _skim(args) -> SkimStage:
    if not 2 <= len(args) <= 4:
        raise ValueError(f"a skim stage is {SKIM_FORM}, e.g. skim:2,0.001 (got skim:{','.join(args)})")
    values = _floats(args, 2, 4, "skim")
    layer = _int(values[0], "skim layer")
    margin = _int(values[2], "skim margin") if len(values) > 2 else None
    spans = _int(values[3], "skim spans") if len(values) > 3 else None
    extra = {k: v for k, v in (("margin", margin), ("spans", spans)) if v is not None}
    return SkimStage(layer, values[1], **extra)


def parse_policy(spec: str) -> ExitPolicy:
    """``NAME[:P1,P2,...][+skim:LAYER,THRESHOLD[,MARGIN[,SPANS]]]...`` -> policy.

    Exit policies: ``entropy:0.4,0.4``, ``maxprob:0.9``, ``patience:2``, ``similarity:bikl,0.05,2``,
    ``static:3``, ``none``. Skim stages follow with ``+``: ``entropy:2.4,2.9+skim:2,0.001`` (skim after
    layer 2 at threshold 0.001), ``none+skim:2,0.001+skim:4,0.01`` (skimming alone, twice).

    Raises:
        ValueError: unknown name or bad parameters, in one line with the accepted forms.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a policy spec is a string (got {type(spec).__name__})")
    parts = spec.split("+")
    if any(not p.strip() for p in parts):
        raise ValueError(f"policy spec {spec!r} has an empty part around '+'; write e.g. entropy:0.4,0.4+skim:2,0.001")
    name, args = _name_args(parts[0])
    if name == "skim":
        raise ValueError(f"{spec!r} starts with a skim stage; skimming follows an exit policy: "
                         f"write none+{parts[0].strip()} for skimming alone")
    if name not in PARSERS:
        raise ValueError(f"unknown exit policy {name!r}; choose one of {', '.join(PARSERS)} "
                         f"(e.g. entropy:0.4,0.4, similarity:bikl,0.05,2), optionally followed by +{SKIM_FORM}")
    policy = PARSERS[name](args)
    stages = []
    for part in parts[1:]:
        name, args = _name_args(part)
        if name != "skim":
            raise ValueError(f"only skim stages may follow the exit policy after '+' (got {part.strip()!r}); "
                             f"write {SKIM_FORM}")
        stages.append(_skim(args))
    if not stages:
        return policy
    layers = [s.layer for s in stages]
    if len(set(layers)) != len(layers):
        raise ValueError(f"two skim stages after the same layer (layers {','.join(map(str, layers))}); one per layer")
    return SkimmingPolicy(policy, tuple(sorted(stages, key=lambda s: s.layer)))
