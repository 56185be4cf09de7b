"""``elma calibrate``: certify each exit policy's most aggressive setting with Learn then Test, store the default.

The guarantee (Learn then Test, as CALM uses it; the p-value maths is in ``elma.runtime.risk``): with
probability at least 1 - epsilon over the draw of the calibration questions, the mean loss of the stored
setting on new questions drawn like them is at most delta. Three losses, per question, the first two in [0, 1]:

* ``f1``: max(0, F1_full - F1_early), the answer's F1 drop against full depth (labelled questions). Its mean
  bounds the mean F1 drop from above, so certifying it certifies the F1 drop in points (delta / 100).
* ``consistency``: 1 - F1(early answer, full-depth answer), a no-answer verdict counting as the empty answer
  (both empty: agreement). No labels needed: questions from the field can calibrate a bundle.
* ``f1-mean``: F1_full - F1_early, signed (in [-1, 1]; an early answer better than the full-depth one counts
  as a gain). Its mean is the difference of the mean F1s, exactly what "F1 within D points of full depth"
  means, where ``f1`` bounds it from above by counting no gain. For the p-values it is mapped to [0, 1] as
  (loss + 1) / 2, delta with it; the spread of that loss is small around a mean near 1/2, which the
  Hoeffding-Bentkus bound cannot see, so this risk is tested by betting (WSR) unless ``--bound hb`` is given.

The p-value (``--bound``): Hoeffding-Bentkus (``hb``, CALM's; the default for ``f1`` and ``consistency``) from
the mean alone, or by betting (``wsr``) on the losses in a seeded random order (``elma.runtime.risk``).

The calibration file is split by article (seeded): a *check* part set aside, on which the certified
settings are only measured afterwards; of the rest, a *learn* part that builds each policy's grid and orders
it from most to least conservative (ascending empirical risk, then descending mean layers), and a *test*
part on which each setting gets its Hoeffding-Bentkus p-value. Walking the order, settings pass while
p <= epsilon / (number of policies) (Bonferroni across policies, so that every certified setting of every
policy holds at once and the default may be picked among them afterwards); the walk stops at the first
failure. A policy's certified setting is its passed setting with the fewest mean layers on the test part;
the default is the certified setting with the fewest mean layers over all policies, else full depth.
Keeping the grid and the order off the test part is what makes the p-values valid: they must not depend on
the questions they are computed from.

Skimming (``--skim-layers``, ``--skim-thresholds``): the file is recorded once more per skim setting
(``elma.runtime.calibrate``), and each policy's sequence holds its grid on every record: the settings
without skimming and the same policy with each skim setting (``entropy:2.4,2.9+skim:2,0.001``), ordered
together by learn risk, at the same epsilon / (number of policies). Skimming saves tokens, not layers, so
with a skim grid the cost that orders ties and picks the certified setting and the default is the mean
token-layers per question (tokens times layers run, over its windows) instead of the mean layers.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench import sweep as sw
from elma.data.squad import Example
from elma.errors import DataError
from elma.runtime.calibrate import (
    CALIBRATED_POLICIES,
    NO_SKIM,
    Recordings,
    against_reference,
    full_depth_answers,
    record_all,
    subset,
)
from elma.runtime.policies import NoExitPolicy
from elma.runtime.risk import fixed_sequence, hoeffding_bentkus_pvalue, wsr_pvalue

logger = logging.getLogger(__name__)

RISKS = ("f1", "consistency", "f1-mean")
SIGNED_RISKS = ("f1-mean",)  # per-question loss in [-1, 1]
BOUNDS = ("hb", "wsr")  # Hoeffding-Bentkus, betting
BOUND_NAMES = {"hb": "Hoeffding-Bentkus", "wsr": "betting (WSR)"}
COSTS = ("layers", "token-layers")  # what a certified setting saves: mean exit layers, or tokens times layers
DEFAULT_EPSILON = 0.1  # 1 - confidence of the guarantee
DEFAULT_CHECK_FRACTION = 0.2  # of the questions, by article, measured on only
DEFAULT_LEARN_FRACTION = 0.25  # of the remaining questions, by article, that build and order the grids


def default_bound(risk: str) -> str:
    """The p-value a risk is tested with unless ``--bound`` says otherwise."""
    return "wsr" if risk in SIGNED_RISKS else "hb"


def p_value(test_loss: np.ndarray, risk: str, delta: float, epsilon: float, bound: str) -> float:
    """The p-value of "risk > delta" from one setting's test-part losses (in a seeded random order for ``wsr``).

    Args:
        test_loss: per-question losses, in [0, 1] (in [-1, 1] for a signed risk, mapped to [0, 1] here).
        delta: the risk level on the loss scale (0-1).
        epsilon: the level the p-value is compared with (sizes the bets of ``wsr``).
    """
    loss = np.asarray(test_loss, dtype=np.float64)
    if risk in SIGNED_RISKS:
        loss, delta = (loss + 1.0) / 2.0, (delta + 1.0) / 2.0
    loss = np.clip(loss, 0.0, 1.0)  # float error only: the losses are F1 differences
    if bound == "wsr":
        return wsr_pvalue(loss, delta, epsilon)
    return hoeffding_bentkus_pvalue(float(loss.mean()), int(loss.size), delta)


@dataclass(frozen=True)
class Split:
    """Question indices of the three parts of the calibration file."""

    learn: np.ndarray  # builds each policy's grid and orders it
    test: np.ndarray  # p-values: the n of the guarantee
    check: np.ndarray  # measured on only, after the choice
    unit: str  # what was kept together: "article" (title) or "paragraph" (a file with a single title)


def split_questions(examples: Sequence[Example], check_fraction: float = DEFAULT_CHECK_FRACTION,
                    learn_fraction: float = DEFAULT_LEARN_FRACTION, seed: int = 0) -> Split:
    """Split by article, seeded: about ``check_fraction`` of the questions to check on, then about
    ``learn_fraction`` of the rest to learn on, the remaining ones to test on.

    Questions of one article stay together (they share a passage and often an answer, so that a part would
    otherwise tell about another). A file whose questions all share one title is split by paragraph.
    """
    if not 0.0 <= check_fraction < 1.0:
        raise ValueError(f"--check-fraction must be in [0, 1) (got {check_fraction})")
    if not 0.0 < learn_fraction < 1.0:
        raise ValueError(f"--learn-fraction must be in (0, 1) (got {learn_fraction})")
    unit = "article"
    keys = [ex.title for ex in examples]
    if len(set(keys)) < 3:
        unit, keys = "paragraph", [ex.context for ex in examples]
    groups: Dict[str, List[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    order = np.random.default_rng(seed).permutation(len(members))
    n = len(examples)
    check: List[int] = []
    learn: List[int] = []
    test: List[int] = []
    for g in order.tolist():
        if len(check) < check_fraction * n:
            check += members[g]
        elif len(learn) < learn_fraction * (n - len(check)):
            learn += members[g]
        else:
            test += members[g]
    if not test or not learn:
        raise DataError(f"the calibration file has too few {unit}s ({len(members)}) to set {check_fraction:g} aside "
                        f"to check on and learn on {learn_fraction:g} of the rest; use a larger file, or "
                        "--check-fraction 0")
    learn_idx, test_idx, check_idx = (np.array(sorted(part), dtype=np.int64) for part in (learn, test, check))
    return Split(learn_idx, test_idx, check_idx, unit)


@dataclass(frozen=True)
class SequenceResult:
    """Fixed-sequence testing over one policy's settings."""

    order: np.ndarray  # setting indices in the order tested
    p_values: np.ndarray  # Hoeffding-Bentkus p-value of each, in that order
    passed: int  # the first ``passed`` settings of ``order`` are certified
    chosen: Optional[int]  # setting index: the certified one with the fewest test mean layers (None: none)


def certify_sequence(learn_risk: np.ndarray, learn_layers: np.ndarray, test_risk: np.ndarray, test_layers: np.ndarray,
                     n_test: int, delta: float, epsilon: float,
                     p_values: Optional[np.ndarray] = None) -> SequenceResult:
    """Learn then Test over the settings of one policy.

    Args:
        learn_risk, learn_layers: (S,) mean loss (0-1) and mean cost (layers, or token-layers) of each setting on
            the learn part; they set the order (ascending risk, then descending cost: most conservative first).
        test_risk, test_layers: (S,) the same on the test part, of ``n_test`` questions.
        delta: the risk level (0-1 loss scale).
        epsilon: the error level of this sequence.
        p_values: (S,) each setting's p-value, computed from its test-part losses (``p_value``); None: the
            Hoeffding-Bentkus p-value of ``test_risk`` over ``n_test`` questions.
    """
    learn_risk, learn_layers = np.asarray(learn_risk, float), np.asarray(learn_layers, float)
    test_risk, test_layers = np.asarray(test_risk, float), np.asarray(test_layers, float)
    order = np.lexsort((-learn_layers, learn_risk))  # last key first: risk ascending, ties deepest first
    if p_values is None:
        p = np.array([hoeffding_bentkus_pvalue(float(np.clip(test_risk[i], 0.0, 1.0)), n_test, delta) for i in order])
    else:
        p = np.asarray(p_values, dtype=np.float64)[order]
    passed = fixed_sequence(p.tolist(), epsilon)
    chosen = None
    if passed:
        chosen = int(min(order[:passed].tolist(), key=lambda i: (test_layers[i], test_risk[i])))
    return SequenceResult(order, p, passed, chosen)


@dataclass(frozen=True)
class CheckResult:
    """A setting measured on the check part (questions the calibration did not see)."""

    questions: int
    risk_points: float  # realised mean loss, x100 (same scale as delta)
    within_delta: bool
    mean_layers: float
    f1: Optional[float]  # official F1 there, percent (None: unlabelled questions)
    full_depth_f1: Optional[float]
    mean_token_layers: Optional[float] = None  # tokens times layers per question there
    full_depth_token_layers: Optional[float] = None  # the same at full depth without skimming


@dataclass(frozen=True)
class PolicyCertificate:
    """What Learn then Test certified for one policy."""

    policy: str
    settings: int  # grid size
    passed: int  # settings certified along the sequence before its first failure
    spec: Optional[str]  # the certified setting with the fewest mean layers; None: no setting certified
    mean_layers: Optional[float]  # on the test part
    risk_points: Optional[float]  # empirical mean loss on the test part, x100
    p_value: Optional[float]
    f1: Optional[float]  # official F1 on the test part, percent (None: unlabelled)
    first_failure: Optional[str]  # the setting the sequence stopped at (None: every setting passed)
    first_failure_p: Optional[float]
    check: Optional[CheckResult]  # None without a check part or without a certified setting
    mean_token_layers: Optional[float] = None  # on the test part: tokens times layers per question
    skim: str = ""  # the certified setting's skim stages ("" none)


@dataclass(frozen=True)
class LttReport:
    risk: str  # "f1", "consistency" or "f1-mean"
    delta_points: float  # certified: mean loss <= delta_points / 100 with probability >= 1 - epsilon
    epsilon: float
    epsilon_per_policy: float  # epsilon / number of policies (Bonferroni)
    n: int  # test-part questions the p-values are computed on
    questions: int  # in the file
    learn_questions: int
    check_questions: int
    split_unit: str
    seed: int
    num_layers: int
    full_depth_f1: Optional[float]  # test part, percent (None: unlabelled)
    policies: Dict[str, PolicyCertificate]
    default: str  # the spec the runtime uses when none is given ("none": full depth)
    grid_points: int
    record_s: float  # running the model over the file (every recording pass)
    search_s: float  # simulating and testing every setting
    cost: str = "layers"  # what orders ties and picks the certified settings: "layers" or "token-layers"
    skim_grid: Tuple[str, ...] = ()  # skim settings recorded besides no skimming
    recording_passes: int = 1  # passes of the model over the file: 1 + len(skim_grid)
    full_depth_token_layers: Optional[float] = None  # test part, per question, full depth without skimming
    bound: str = "hb"  # the p-value: "hb" (Hoeffding-Bentkus) or "wsr" (betting)

    @property
    def default_check(self) -> Optional[CheckResult]:
        for cert in self.policies.values():
            if cert.spec is not None and self.default in (cert.spec, _as_full_depth(cert)):
                return cert.check
        return None

    def manifest_entry(self, data_name: str) -> Dict[str, object]:
        """The bundle manifest's ``exit_thresholds`` value; ``default`` is a plain policy spec."""
        check = self.default_check
        return {"default": self.default, "method": f"learn-then-test (fixed sequence, {BOUND_NAMES[self.bound]})",
                "risk": self.risk, "delta_points": self.delta_points, "epsilon": self.epsilon, "n": self.n,
                "check": None if check is None else asdict(check), "data": data_name, "questions": self.questions,
                "learn_questions": self.learn_questions, "check_questions": self.check_questions,
                "split_unit": self.split_unit, "seed": self.seed, "full_depth_f1": self.full_depth_f1,
                "cost": self.cost, "skim_grid": list(self.skim_grid), "recording_passes": self.recording_passes,
                "full_depth_token_layers": self.full_depth_token_layers,
                "policies": {k: asdict(v) for k, v in self.policies.items()}}


def _as_full_depth(cert: PolicyCertificate) -> str:
    """``none`` (with the certificate's skim stages): a setting that runs every layer, without its exit heads."""
    return "none" + (f"+{cert.skim}" if cert.skim else "")


def choose_default(certificates: Dict[str, PolicyCertificate], default: Optional[str] = None,
                   num_layers: Optional[int] = None, cost: str = "layers") -> str:
    """The policy spec to run when none is given: the certified setting of policy ``default`` if named, else
    the certified setting with the fewest mean layers (``cost="token-layers"``: token-layers), else ``"none"``
    (full depth, always within any delta). Where that setting still runs every one of ``num_layers`` layers,
    ``"none"`` (with its skim stages, if any): it reaches the same answers without running the exit heads.

    Raises:
        ValueError: ``default`` names a policy that was not calibrated or certified nothing.
    """
    certified = {k: c for k, c in certificates.items() if c.spec is not None}
    if default is not None:
        if default not in certified:
            raise ValueError(f"--default {default!r}: that policy has no certified setting "
                             f"(certified: {', '.join(certified) or 'none'})")
        return str(certified[default].spec)
    if not certified:
        return "none"
    if cost == "token-layers":
        best = min(certified.values(), key=lambda c: (c.mean_token_layers, c.mean_layers, c.risk_points))
    else:
        best = min(certified.values(), key=lambda c: (c.mean_layers, c.risk_points))
    if num_layers is not None and best.mean_layers >= num_layers:
        return _as_full_depth(best)
    return str(best.spec)


def certify(recordings: Recordings, split: Split, risk: str, delta_points: float, epsilon: float,
            policies: Sequence[str] = CALIBRATED_POLICIES, cost: Optional[str] = None, bound: Optional[str] = None,
            seed: int = 0) -> Tuple[Dict[str, PolicyCertificate], int, Optional[float]]:
    """Learn then Test for each policy on the recorded calibration set, every skim setting in its sequence.

    Args:
        recordings: the file recorded without skimming and per skim setting (``elma.runtime.calibrate``).
        cost: "layers" or "token-layers"; None: token-layers when a skim setting was recorded, else layers.
        bound: "hb" or "wsr"; None: ``default_bound(risk)``.
        seed: the order ``wsr`` reads the test part in (a seeded permutation).

    Returns:
        (certificate per policy, settings simulated, full-depth F1 on the test part or None).
    """
    _validate(risk, delta_points, epsilon, policies, bound)
    bound = bound or default_bound(risk)
    cost = cost or ("token-layers" if len(recordings.records) > 1 else "layers")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)} (got {cost!r})")
    delta = delta_points / 100.0
    eps_each = epsilon / len(policies)
    examples = recordings.examples
    labelled = np.array([_labelled(ex) for ex in examples])
    _check_labels(risk, labelled)
    full_gold_f1 = sw.simulate(recordings.full, NoExitPolicy()).f1  # (N,) 0-1
    full_tl = sw.token_layers(recordings.full, np.full(recordings.num_windows, recordings.num_layers))
    if risk != "consistency":  # against the gold answers
        scored = dict(recordings.records)
    else:  # F1 against the full-depth answer without skimming
        references = full_depth_answers(recordings)
        scored = {k: against_reference(r, examples, references) for k, r in recordings.records.items()}
    learn_records = {k: subset(r, split.learn) for k, r in recordings.records.items()}

    def f1_of(gold_f1: np.ndarray, idx: np.ndarray) -> Optional[float]:
        return float(100.0 * gold_f1[idx].mean()) if idx.size and labelled[idx].all() else None

    def outcome(key: str, policy) -> Tuple[sw.Simulated, np.ndarray, np.ndarray, np.ndarray]:
        """(simulation, per-question loss, layers, token-layers) of ``policy`` on record ``key``."""
        sim = sw.simulate(scored[key], policy)
        if risk == "consistency":
            loss = 1.0 - sim.f1
        else:
            loss = full_gold_f1 - sim.f1  # f1-mean: signed
            if risk == "f1":
                loss = np.maximum(0.0, loss)
        return sim, loss, sim.exit_layer.astype(np.float64), \
            sw.token_layers(recordings.records[key], sim.window_layer).astype(np.float64)

    test_order = split.test[np.random.default_rng(seed).permutation(split.test.size)]  # what wsr bets along
    out: Dict[str, PolicyCertificate] = {}
    points = 0
    for name in policies:
        settings = [(key, p) for key, rec in learn_records.items() for p in _grid(rec, name)]
        points += len(settings)
        stats = np.empty((len(settings), 5))  # learn risk, learn cost, test risk, test cost, p-value
        for s, (key, policy) in enumerate(settings):
            _, loss, layers, tl = outcome(key, policy)
            c = tl if cost == "token-layers" else layers
            stats[s] = (loss[split.learn].mean(), c[split.learn].mean(), loss[split.test].mean(), c[split.test].mean(),
                        p_value(loss[test_order], risk, delta, eps_each, bound))
        seq = certify_sequence(stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], split.test.size, delta, eps_each,
                               stats[:, 4])
        specs = [sw.spec_on(recordings.records[key], p) for key, p in settings]
        failure = None if seq.passed == len(settings) else int(seq.order[seq.passed])
        fail_spec = None if failure is None else specs[failure]
        fail_p = None if failure is None else float(seq.p_values[seq.passed])
        if seq.chosen is None:
            out[name] = PolicyCertificate(name, len(settings), 0, None, None, None, None, None, fail_spec, fail_p, None)
            if fail_spec is None:
                logger.warning("%s: no setting to test (a %d-layer model)", name, recordings.num_layers)
            else:
                logger.warning("%s: no setting certified (the sequence stopped at %s, p = %.3g > %.3g)",
                               name, fail_spec, fail_p, eps_each)
            continue
        c = seq.chosen
        key, chosen = settings[c]
        _, loss, layers, tl = outcome(key, chosen)
        gold_f1 = sw.simulate(recordings.records[key], chosen).f1
        check = None
        if split.check.size:
            check_risk = float(100.0 * loss[split.check].mean())
            check = CheckResult(int(split.check.size), check_risk, check_risk <= delta_points,
                                float(layers[split.check].mean()), f1_of(gold_f1, split.check),
                                f1_of(full_gold_f1, split.check), float(tl[split.check].mean()),
                                float(full_tl[split.check].mean()))
        p_chosen = float(seq.p_values[int(np.flatnonzero(seq.order == c)[0])])
        out[name] = PolicyCertificate(name, len(settings), seq.passed, specs[c], float(layers[split.test].mean()),
                                      float(100.0 * loss[split.test].mean()), p_chosen, f1_of(gold_f1, split.test),
                                      fail_spec, fail_p, check, float(tl[split.test].mean()), key)
        logger.info("%s: %s certified (%d of %d settings passed), mean layers %.2f, token-layers %.0f, risk %.3f "
                    "points, p = %.3g", name, specs[c], seq.passed, len(settings), layers[split.test].mean(),
                    tl[split.test].mean(), 100.0 * loss[split.test].mean(), p_chosen)
    return out, points, f1_of(full_gold_f1, split.test)


def _grid(record, name: str) -> list:
    """A policy's settings on a (learn part) record; ``none`` is one setting, full depth (skimming alone when the
    record is skimmed)."""
    return [NoExitPolicy()] if name == "none" else sw.grid(record, name)


def _labelled(ex: Example) -> bool:
    return ex.is_impossible or bool(ex.answers)


def _check_labels(risk: str, labelled: np.ndarray) -> None:
    if risk != "consistency" and not labelled.all():
        raise DataError(f"{int((~labelled).sum())} of {labelled.size} calibration questions have no answers and are "
                        f"not marked impossible: the {risk} risk needs labels; use --risk consistency")


def _validate(risk: str, delta_points: float, epsilon: float, policies: Sequence[str],
              bound: Optional[str] = None) -> None:
    if risk not in RISKS:
        raise ValueError(f"--risk must be one of {', '.join(RISKS)} (got {risk!r})")
    if bound is not None and bound not in BOUNDS:
        raise ValueError(f"--bound must be one of {', '.join(BOUNDS)} (got {bound!r})")
    if not (0.0 < delta_points < 100.0) or math.isnan(delta_points):
        raise ValueError(f"--delta must be in (0, 100) F1 points (got {delta_points})")
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"--epsilon must be in (0, 1) (got {epsilon})")
    if not policies:
        raise ValueError("no policy to calibrate")
    for name in policies:
        if name not in CALIBRATED_POLICIES + ("none",):
            raise ValueError(f"cannot calibrate policy {name!r}; choose from {', '.join(CALIBRATED_POLICIES)}, "
                             f"or none (full depth: with a skim grid, skimming alone)")


def calibrate(runtime, examples: Sequence[Example], risk: str, delta_points: float, epsilon: float = DEFAULT_EPSILON,
              policies: Sequence[str] = CALIBRATED_POLICIES, default: Optional[str] = None,
              check_fraction: float = DEFAULT_CHECK_FRACTION, learn_fraction: float = DEFAULT_LEARN_FRACTION,
              seed: int = 0, skims: Sequence[str] = (), on_pass=None, bound: Optional[str] = None) -> LttReport:
    """Record the calibration set (once, plus once per skim setting), then certify every policy's grid offline.

    Args:
        runtime: an ``elma.runtime.engine.Runtime`` (any backend).
        examples: calibration questions (from training material, never dev); labelled unless
            ``risk="consistency"``.
        risk: ``"f1"`` (mean F1 drop against full depth, no credit for gains), ``"f1-mean"`` (the difference of
            the mean F1s, gains counted) or ``"consistency"`` (mean disagreement with the full-depth answer,
            label-free).
        delta_points: the risk level in F1 points (0-100).
        epsilon: the guarantee holds with probability at least 1 - epsilon.
        policies: names to calibrate (``CALIBRATED_POLICIES``).
        default: the policy whose certified setting the runtime uses by default; None: the fastest certified.
        check_fraction, learn_fraction, seed: the split (``split_questions``).
        skims: skim settings (``elma.runtime.calibrate.skim_grid``), one more recording pass each.
        on_pass: called with (pass, passes, skim spec) before each recording pass.
        bound: the p-value, "hb" or "wsr" (None: ``default_bound(risk)``).
    """
    _validate(risk, delta_points, epsilon, policies, bound)
    bound = bound or default_bound(risk)
    _check_labels(risk, np.array([_labelled(ex) for ex in examples], dtype=bool))
    split = split_questions(examples, check_fraction, learn_fraction, seed)
    recordings = record_all(runtime, examples, skims, on_pass)
    t1 = time.perf_counter()
    certs, points, full_f1 = certify(recordings, split, risk, delta_points, epsilon, policies, bound=bound, seed=seed)
    cost = "token-layers" if len(recordings.records) > 1 else "layers"
    default_spec = choose_default(certs, default, recordings.num_layers, cost)
    t2 = time.perf_counter()
    full_tl = sw.token_layers(recordings.full, np.full(recordings.num_windows, recordings.num_layers))
    grid = tuple(k for k in recordings.records if k != NO_SKIM)
    return LttReport(risk, float(delta_points), float(epsilon), epsilon / len(policies), int(split.test.size),
                     len(examples), int(split.learn.size), int(split.check.size), split.unit, seed,
                     recordings.num_layers, full_f1, certs, default_spec, points, recordings.record_s, t2 - t1,
                     cost, grid, len(recordings.records), float(full_tl[split.test].mean()), bound)


def check_calibration_target(bundle_root, overwrite: bool) -> None:
    """Refuse (exit 2), before calibrating, to replace a calibration the bundle already holds unless ``overwrite``."""
    from pathlib import Path

    from elma.fsutil import refuse_unless_overwrite
    from elma.runtime.bundle import MANIFEST_NAME, read_manifest

    if read_manifest(bundle_root).get("exit_thresholds"):
        refuse_unless_overwrite(f"{Path(bundle_root) / MANIFEST_NAME} (a calibration, exit_thresholds)", "bundle",
                                overwrite, hint="add --dry-run to only report")


def check_model_target(bundle_root, model_dir, overwrite: bool) -> None:
    """Refuse, before calibrating, a ``--model-dir`` that cannot take the bundle's default: not an ELMA model folder
    or other weights than the bundle was exported from (exit 3), or one holding a default already (exit 2) unless
    ``overwrite``."""
    from pathlib import Path

    from elma.errors import ModelLoadError
    from elma.fsutil import refuse_unless_overwrite
    from elma.runtime.bundle import read_manifest
    from elma.runtime.defaults import WEIGHTS_NAME, read_model_config
    from elma.runtime.filehash import sha256_memo

    model_dir = Path(model_dir)
    config = read_model_config(model_dir)  # ModelLoadError: not an ELMA model folder
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: missing; --model-dir needs an ELMA model folder with its weights")
    source = (read_manifest(bundle_root).get("source") or {}).get("weights_sha256")
    digest = sha256_memo(weights)
    if source != digest:
        raise ModelLoadError(f"--model-dir {model_dir}: its weights ({digest[:12]}...) are not those the bundle was "
                             f"exported from ({str(source)[:12]}...); export the bundle from this folder")
    if config["elma"].get("default_policy") is not None:
        refuse_unless_overwrite(f"{model_dir / 'config.json'} (a default policy, {config['elma']['default_policy']})",
                                "model folder", overwrite, hint="add --dry-run to only report")


def write_calibration(bundle_root, report: LttReport, data_name: str, backend: str = "onnxruntime",
                      model_dir=None) -> None:
    """Store the certified default and the per-policy certificates in the bundle manifest, atomically; with
    ``model_dir`` (checked by ``check_model_target``), the default and how it was certified in its config.json too."""
    from elma.runtime.bundle import read_manifest, update_manifest
    from elma.runtime.defaults import write_default_policy

    entry = report.manifest_entry(data_name)
    update_manifest(bundle_root, {"exit_thresholds": entry})
    if model_dir is not None:
        manifest = read_manifest(bundle_root)
        calibration = {k: v for k, v in entry.items() if k != "policies"}  # the default's certificate, not the grid
        calibration["backend"] = f"{backend}, {manifest.get('precision', '?')} bundle"
        write_default_policy(model_dir, report.default, calibration, overwrite=True)  # refused earlier unless asked
