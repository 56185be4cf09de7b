"""The split bandit (elma.offload.split): side observations, UCB1's order of play, sublinear regret on a known
problem, costs from measurements, and a state that round-trips and refuses a damaged file in one line."""

import json
import math
import random

import pytest

from elma.offload.split import (
    CostModel,
    Sample,
    SplitBandit,
    SplitCosts,
    SplitStateError,
    load_state,
    observation,
    save_state,
)

COSTS = SplitCosts((4.0, 8.0, 12.0, 16.0), 30.0)  # 4 layers of 4 ms each, 30 ms to offload


def test_an_offload_at_split_s_reveals_every_split_up_to_s():
    seen = observation(3, 4, 3, None, None)
    assert seen == {1: Sample(1, True, None), 2: Sample(2, True, None), 3: Sample(3, True, None)}


def test_a_local_exit_reveals_every_split_up_to_the_played_one():
    """Exited at 2 under split 3: split 1 would have offloaded after 1 layer, split 2 exits at 2 too. Split 4 would
    also exit at 2, but it is not credited: deeper splits seen only on early exits would look better than they are."""
    seen = observation(3, 4, 2, 2, 0.8)
    assert seen == {1: Sample(1, True, None), 2: Sample(2, False, 0.8), 3: Sample(2, False, 0.8)}


@pytest.mark.parametrize("args", [(0, 4, 1, None, None), (5, 4, 4, 4, 0.5), (4, 4, 4, None, None),
                                  (3, 4, 2, None, None), (2, 4, 3, 3, 0.5), (3, 4, 3, 2, 0.5)])
def test_impossible_observations_are_refused(args):
    with pytest.raises(ValueError):
        observation(*args)


def test_update_adds_to_every_arm_up_to_the_played_one_and_no_further():
    b = SplitBandit(4, mu=1.0, exploration=1.0, costs=COSTS)
    b.update(3, observation(3, 4, 3, None, None))
    assert b.n == [1, 1, 1, 0] and b.plays == [0, 0, 1, 0] and b.offloads == [1, 1, 1, 0] and b.rounds == 1
    means = b.mean_rewards()
    assert means[3] is None
    for arm in (1, 2, 3):  # utility 1 (the server's answer), cost arm * 4 ms + 30 ms, out of 16 + 30 ms
        assert means[arm - 1] == pytest.approx((1 - (4 * arm + 30) / 46 + 1) / 2)
    with pytest.raises(ValueError, match="played split 4"):
        b.update(4, observation(3, 4, 3, None, None))


def test_ucb_plays_each_unseen_arm_once_then_exploits():
    """Offloading is dear: the bandit first plays each arm it has no sample of (the shallowest first; side
    observations reach only shallower arms, so each is played once), then settles on the cheapest."""
    b = SplitBandit(4, mu=4.0, exploration=0.2, costs=COSTS)
    played = []
    for _ in range(200):
        s = b.choose()
        played.append(s)
        # every question is unsure until layer 4: local splits run to s and offload; split 4 answers at 4
        b.update(s, observation(s, 4, 4, 4, 0.9) if s == 4 else observation(s, 4, s, None, None))
    assert played[:4] == [1, 2, 3, 4]
    assert b.best() == 4 and played[-50:].count(4) >= 45  # 16 ms locally beats 34 ms offloaded


def _synthetic_question(rng):
    """A question whose policy is confident at layer 2 with probability 0.8, else never."""
    return 2 if rng.random() < 0.8 else None


def _reward(costs, split, exit_layer, mu):
    if exit_layer is not None and exit_layer <= split:
        return costs.reward(exit_layer, False, 0.95, mu)
    if split == 4:
        return costs.reward(4, False, 0.5, mu)
    return costs.reward(split, True, None, mu)


def test_regret_is_sublinear_on_a_stationary_problem_with_a_known_best_arm():
    """Layers of 10 ms, 15 ms to offload: offloading after layer 2 the questions not settled there beats running them
    to layer 4 (20 ms more) and beats offloading everything after layer 1."""
    mu, rng = 2.0, random.Random(0)
    costs = SplitCosts((10.0, 20.0, 30.0, 40.0), 15.0)
    means = {s: sum(_reward(costs, s, e, mu) for e in (2,) * 8 + (None,) * 2) / 10 for s in range(1, 5)}
    best = max(means, key=means.get)
    assert best == 2
    b = SplitBandit(4, mu=mu, exploration=0.05, costs=costs)
    regret, marks, played = 0.0, {}, []
    for t in range(1, 16001):
        s = b.choose()
        played.append(s)
        k = _synthetic_question(rng)
        regret += means[best] - means[s]
        if k is not None and k <= s:
            b.update(s, observation(s, 4, k, k, 0.95))
        elif s == 4:
            b.update(s, observation(s, 4, 4, 4, 0.5))
        else:
            b.update(s, observation(s, 4, s, None, None))
        if t in (1000, 16000):
            marks[t] = regret
    assert marks[16000] < 4 * marks[1000]  # 16x the questions, under 4x the regret
    assert b.best() == best and played[-1000:].count(best) > 900


def test_costs_come_from_measured_step_times_and_round_trips():
    model = CostModel(3, step_ms=[1.0, 1.0, 1.0], offload_ms=300.0)
    assert model.costs() == SplitCosts((1.0, 2.0, 3.0), 300.0)  # priors before any measurement
    model.add(step_ms=[2.0, 4.0], offload_ms=50.0)
    model.add(step_ms=[4.0, 6.0, 8.0])
    model.add(step_ms=[float("nan")], offload_ms=70.0)
    assert model.costs() == SplitCosts((3.0, 8.0, 16.0), 60.0)


def test_reward_prefers_cheap_answers_and_the_full_models():
    mu = 1.0
    local = COSTS.reward(2, False, 0.9, mu)
    assert COSTS.reward(2, False, 0.5, mu) < local  # less confident, same cost
    assert COSTS.reward(3, False, 0.9, mu) < local  # same confidence, dearer
    assert COSTS.reward(4, False, 0.1, mu) == COSTS.reward(4, False, 0.9, mu)  # full depth: the full model's answer
    assert 0.0 <= COSTS.reward(4, True, None, 100.0) <= COSTS.reward(1, False, 1.0, 0.0) <= 1.0


def test_state_round_trips(tmp_path):
    b = SplitBandit(4, mu=1.5, exploration=0.3, costs=CostModel(4, offload_ms=200.0))
    for s, seen in [(1, observation(1, 4, 1, None, None)), (3, observation(3, 4, 2, 2, 0.7))]:
        b.update(s, seen)
    b.costs.add(step_ms=[3.0, 3.5], offload_ms=45.0)
    path = tmp_path / "state" / "split.json"
    save_state(path, b, "abc")
    again = load_state(path, "abc", 4)
    assert again.to_dict() == b.to_dict() and again.mean_rewards() == b.mean_rewards()
    assert again.choose() == b.choose() and again.costs.costs() == b.costs.costs()
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left behind
    assert load_state(tmp_path / "none.json", "abc", 4) is None


@pytest.mark.parametrize("content, match", [
    ("{not json", "not a readable split state"),
    ("[1, 2]", "not a split state file"),
    (json.dumps({"format": "elma-split-bandit", "version": 99}), "version 99"),
    (json.dumps({"format": "elma-split-bandit", "version": 1, "fingerprint": "other", "bandit": {}}), "another model"),
    (json.dumps({"format": "elma-split-bandit", "version": 1, "fingerprint": "abc", "bandit": {"num_layers": 4}}),
     "damaged split state"),
])
def test_a_damaged_state_file_is_refused_in_one_line_and_kept(tmp_path, content, match):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(SplitStateError, match=match) as info:
        load_state(path, "abc", 4)
    assert len(str(info.value).splitlines()) == 1 and "remove it to learn afresh" in str(info.value)
    assert path.read_text() == content  # nothing the user owns is lost


def test_a_state_for_another_depth_is_refused(tmp_path):
    path = tmp_path / "split.json"
    save_state(path, SplitBandit(4, costs=CostModel(4)), "abc")
    with pytest.raises(SplitStateError, match="4 layers, the model has 6"):
        load_state(path, "abc", 6)


@pytest.mark.parametrize("kwargs", [dict(num_layers=0), dict(num_layers=3, mu=-1.0), dict(num_layers=3, exploration=math.nan)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SplitBandit(**kwargs)
