"""Exit policies on synthetic logits: each decides as its paper says, and parses from the CLI form."""

import dataclasses

import numpy as np
import pytest

from elma.runtime.policies import (
    EntropyPolicy,
    MaxProbPolicy,
    NoExitPolicy,
    PatiencePolicy,
    SimilarityPolicy,
    StaticPolicy,
    parse_policy,
)

T = 10
MASK = np.array([True] + [False] * 3 + [True] * 6)  # CLS, 3 question tokens, 6 context tokens


def peaked(pos: int, height: float = 20.0) -> np.ndarray:
    x = np.zeros(T, dtype=np.float32)
    x[pos] = height
    return x


FLAT = np.zeros(T, dtype=np.float32)


def run(policy, layers):
    """Layer at which the policy exits (None: never), threading its state as the runtime does."""
    state = None
    for i, (s, e) in enumerate(layers, start=1):
        d = policy.decide(i, s, e, MASK, state)
        if d.exit:
            return i
        state = d.state
    return None


def test_entropy_exits_only_when_both_distributions_are_sharp():
    pol = EntropyPolicy(0.4, 0.4)
    assert pol.decide(1, peaked(5), peaked(6), MASK).exit
    assert not pol.decide(1, peaked(5), FLAT, MASK).exit, "a flat end distribution keeps going"
    assert not pol.decide(1, FLAT, FLAT, MASK).exit
    d = pol.decide(1, peaked(5) * 1e6, peaked(6) * 1e6, MASK)
    assert d.exit and d.score < 0


def test_entropy_ignores_masked_question_tokens():
    start = peaked(5)
    start[1] = 20.0  # a question token as high as the answer would double the entropy
    assert EntropyPolicy(0.1, 0.1).decide(1, start, peaked(6), MASK).exit


def test_maxprob():
    pol = MaxProbPolicy(0.9)
    assert pol.decide(1, peaked(5, 10), peaked(6, 10), MASK).exit
    assert not pol.decide(1, peaked(5, 1), peaked(6, 10), MASK).exit
    assert pol.decide(1, FLAT, FLAT, MASK).score == pytest.approx(1 / 7)  # 7 allowed positions


def test_patience_counts_unchanged_answers():
    same = (peaked(5), peaked(6))
    other = (peaked(7), peaked(8))
    assert run(PatiencePolicy(2), [other, same, same, same]) == 4
    assert run(PatiencePolicy(1), [same, same]) == 2
    assert run(PatiencePolicy(2), [same, other, same, other]) is None


def test_patience_treats_no_answer_as_an_answer():
    null = (peaked(0), peaked(0))
    assert run(PatiencePolicy(1), [null, null]) == 2


@pytest.mark.parametrize("variant", ["kl", "rekl", "bikl"])
def test_similarity_needs_close_adjacent_layers_for_patience_layers(variant):
    a = (peaked(5, 5), peaked(6, 5))
    b = (peaked(5, 5.01), peaked(6, 5.01))
    far = (peaked(8, 5), peaked(9, 5))
    pol = SimilarityPolicy(variant, 0.01, patience=2)
    assert run(pol, [a, b, a]) == 3
    assert run(pol, [a, far, a, far]) is None
    assert run(SimilarityPolicy(variant, 0.01, patience=1), [a, b]) == 2


def test_bikl_is_the_sum_of_kl_and_rekl():
    prev = (peaked(5, 3), peaked(6, 2))
    cur = (peaked(7, 1), peaked(6, 4))
    kl, rekl, bikl = (SimilarityPolicy(v, 1.0).divergence(prev, cur, MASK) for v in ("kl", "rekl", "bikl"))
    assert bikl == pytest.approx(kl + rekl) and kl != pytest.approx(rekl)


def test_static_and_none():
    layers = [(FLAT, FLAT)] * 6
    assert run(StaticPolicy(3), layers) == 3
    assert run(NoExitPolicy(), layers) is None


def test_policies_are_pure_and_shareable():
    pol = PatiencePolicy(1)
    s, e = peaked(5), peaked(6)
    first = pol.decide(1, s, e, MASK)
    assert pol.decide(1, s, e, MASK) == first, "same input, same decision: no hidden state"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pol.patience = 3


@pytest.mark.parametrize("spec, expected", [
    ("entropy:0.4,0.3", EntropyPolicy(0.4, 0.3)),
    ("entropy:0.5", EntropyPolicy(0.5, 0.5)),
    ("maxprob:0.9", MaxProbPolicy(0.9)),
    ("patience:2", PatiencePolicy(2)),
    ("similarity:bikl,0.05,2", SimilarityPolicy("bikl", 0.05, 2)),
    ("similarity:kl,0.1", SimilarityPolicy("kl", 0.1, 1)),
    ("static:3", StaticPolicy(3)),
    ("none", NoExitPolicy()),
])
def test_parse_policy_round_trips(spec, expected):
    pol = parse_policy(spec)
    assert pol == expected
    assert parse_policy(pol.spec) == pol


@pytest.mark.parametrize("spec, message", [
    ("fastest", "unknown exit policy"),
    ("entropy", "takes 1-2"),
    ("entropy:a,b", "must be numbers"),
    ("entropy:-1,1", ">= 0"),
    ("maxprob:1.5", "(0, 1]"),
    ("patience:1.5", "whole number"),
    ("patience:0", ">= 1"),
    ("similarity:l2,0.1", "variant"),
    ("similarity", "needs a variant"),
    ("static:0", ">= 1"),
    ("none:3", "takes 0-0"),
])
def test_parse_policy_errors_say_what_is_accepted(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_policy(spec)


# ---- skim stages in the spec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, exit_policy, stages", [
    ("entropy:2.4,2.9+skim:2,0.001", EntropyPolicy(2.4, 2.9), [(2, 0.001, 2, 5)]),
    ("none+skim:2,0.001", NoExitPolicy(), [(2, 0.001, 2, 5)]),
    (" maxprob:0.9 + skim:4,0.01 + skim:1,0,3,2 ", MaxProbPolicy(0.9), [(1, 0.0, 3, 2), (4, 0.01, 2, 5)]),
    ("similarity:bikl,0.05,2+skim:3,0.5,0", SimilarityPolicy("bikl", 0.05, 2), [(3, 0.5, 0, 5)]),
])
def test_skim_stages_compose_with_any_exit_policy(spec, exit_policy, stages):
    pol = parse_policy(spec)
    assert pol.exit_policy == exit_policy
    assert [(s.layer, s.threshold, s.margin, s.spans) for s in pol.skim_stages] == stages, "ascending layers"
    assert parse_policy(pol.spec) == pol, pol.spec
    assert pol.skim_stage(stages[0][0]) == pol.skim_stages[0] and pol.skim_stage(99) is None
    s, e = peaked(5), peaked(6)
    assert pol.decide(1, s, e, MASK) == exit_policy.decide(1, s, e, MASK), "the exit policy decides"
    assert [pol.reads_exit(k) for k in (1, 2, 3)] == [exit_policy.reads_exit(k) for k in (1, 2, 3)]


def test_plain_policies_have_no_skim_stages():
    pol = parse_policy("entropy:0.4,0.4")
    assert pol.skim_stages == () and pol.skim_stage(1) is None and pol.exit_policy is pol


@pytest.mark.parametrize("spec, message", [
    ("skim:2,0.001", "write none+skim:2,0.001 for skimming alone"),
    ("entropy:1,1+", "empty part around '+'"),
    ("+skim:2,0.1", "empty part around '+'"),
    ("none+entropy:1", "only skim stages may follow"),
    ("none+skim:2", "skim:LAYER,THRESHOLD[,MARGIN[,SPANS]]"),
    ("none+skim:2,0.1,1,1,1", "skim:LAYER,THRESHOLD[,MARGIN[,SPANS]]"),
    ("none+skim:0,0.1", "layer must be >= 1"),
    ("none+skim:1.5,0.1", "whole number"),
    ("none+skim:inf,0.1", "whole number"),
    ("none+skim:2,1.5", "[0, 1]"),
    ("none+skim:2,nan", "[0, 1]"),
    ("none+skim:2,x", "must be numbers"),
    ("none+skim:2,0.1,-1", "margin >= 0"),
    ("none+skim:2,0.1,1,0", "spans >= 1"),
    ("none+skim:2,0.1+skim:2,0.2", "two skim stages after the same layer"),
    ("wobble+skim:2,0.1", "unknown exit policy"),
])
def test_bad_skim_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(ValueError) as err:
        parse_policy(spec)
    assert message in str(err.value) and "\n" not in str(err.value)
