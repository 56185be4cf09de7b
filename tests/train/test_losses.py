"""The multi-exit loss: depth weighting, the thesis' distillation mix, two-stage exits."""

import math

import pytest

torch = pytest.importorskip("torch")
from elma.train.losses import (  # noqa: E402
    answerability_loss_per_exit,
    depth_weights,
    distill_loss,
    multi_exit_loss,
    span_loss_per_exit,
)


def logits(layers=3, batch=2, seq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layers, batch, seq, generator=g), torch.randn(layers, batch, seq, generator=g)


def test_depth_weights_favour_deeper_exits_and_sum_to_one():
    w = depth_weights(4)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10.0)


def test_uniform_and_listed_exit_weights():
    assert torch.allclose(depth_weights(4, scheme="uniform"), torch.full((4,), 0.25))
    assert torch.allclose(depth_weights(3, scheme="1,1,2"), torch.tensor([0.25, 0.25, 0.5]))
    with pytest.raises(ValueError, match="2 values for 3 exits"):
        depth_weights(3, scheme="1,2")


def test_answerability_loss_is_bce_on_the_no_answer_label_and_joins_the_span_loss():
    null = torch.tensor([[0.0, 0.0], [2.0, -2.0]])  # (L=2, B=2) logits, > 0 leans to "no answer"
    pos = torch.tensor([0, 3])  # the first question has no answer
    per_exit = answerability_loss_per_exit(null, pos)
    assert torch.allclose(per_exit[0], torch.tensor(math.log(2.0)))
    assert torch.allclose(per_exit[1], torch.tensor(math.log1p(math.exp(-2.0))))
    start, end = logits(layers=2)
    plain = multi_exit_loss(start, end, pos, pos, exit_weights="uniform")
    both = multi_exit_loss(start, end, pos, pos, exit_weights="uniform", null=null, answerability_weight=0.5)
    assert torch.allclose(both.answerability, per_exit.mean())
    assert torch.allclose(both.total, plain.total + 0.5 * per_exit.mean())


def test_uniform_logits_give_log_seq_len():
    start = torch.zeros(2, 3, 7)
    per_exit = span_loss_per_exit(start, start, torch.tensor([0, 3, 6]), torch.tensor([1, 2, 6]))
    assert torch.allclose(per_exit, torch.full((2,), math.log(7)))


def test_joint_loss_is_depth_weighted_mean():
    start, end = logits()
    pos = torch.tensor([1, 4])
    parts = multi_exit_loss(start, end, pos, pos)
    per_exit = span_loss_per_exit(start, end, pos, pos)
    expected = (per_exit * torch.tensor([1 / 6, 2 / 6, 3 / 6])).sum()
    assert torch.allclose(parts.total, expected)
    assert parts.distill.item() == 0.0


def test_distillation_is_zero_when_exits_agree_and_mixes_as_in_the_thesis():
    start, end = logits(layers=1)
    same = start.expand(3, -1, -1), end.expand(3, -1, -1)
    assert distill_loss(*same, temperature=2.0).abs() < 1e-6
    start, end = logits()
    pos = torch.tensor([0, 2])
    a = 0.3
    parts = multi_exit_loss(start, end, pos, pos, distill_rate=a, temperature=2.0)
    assert parts.distill > 0
    assert torch.allclose(parts.total, (1 - a) * parts.span + a * parts.distill)


def test_distillation_does_not_move_the_teacher():
    start, end = logits()
    start.requires_grad_(True)
    distill_loss(start, end, temperature=1.0).backward()
    assert torch.all(start.grad[-1] == 0) and start.grad[:-1].abs().sum() > 0


def test_two_stage_counts_only_earlier_exits():
    start, end = logits()
    start.requires_grad_(True)
    pos = torch.tensor([1, 1])
    multi_exit_loss(start, end, pos, pos, train_exits=slice(0, 2)).total.backward()
    assert torch.all(start.grad[-1] == 0) and start.grad[0].abs().sum() > 0


def test_bad_distill_rate_is_refused():
    start, end = logits()
    with pytest.raises(ValueError, match="distill_rate"):
        multi_exit_loss(start, end, torch.tensor([0, 0]), torch.tensor([0, 0]), distill_rate=1.5)
