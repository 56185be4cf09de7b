"""Per-layer steps: chained, they are MultiExitQA.forward exactly; ALBERT slots map to groups by its formula."""

import pytest

torch = pytest.importorskip("torch")
from conftest import tiny_config  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from elma.errors import ModelLoadError  # noqa: E402
from elma.model.multi_exit import MASK_FILL, MultiExitQA  # noqa: E402
from elma.model.steps import additive_attention_mask, layer_to_group, model_steps  # noqa: E402


def tiny(name: str, **overrides) -> MultiExitQA:
    cfg = tiny_config(name, **overrides)
    torch.manual_seed(0)
    return MultiExitQA(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()


def batch(seq: int = 12, dtype=torch.int64):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (2, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return ids.to(dtype), mask.to(dtype), types.to(dtype)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name, overrides", [("bert", {}), ("albert", {}), ("albert", {"num_hidden_layers": 4,
                                                                                         "num_hidden_groups": 2})])
def test_chained_steps_are_the_model_exactly(name, overrides, attn):
    model = tiny(name, **overrides)
    model.encoder.set_attn_implementation(attn)
    ids, mask, types = batch()
    with torch.no_grad():
        want_start, want_end = model(ids, mask, types)
    steps = model_steps(model)
    for dtype in (torch.int64, torch.int32):  # engines take int32 ids
        start, end = steps.run_all_exits(*(t.to(dtype) for t in (ids, mask, types)))
        assert torch.equal(start, want_start) and torch.equal(end, want_end), f"{name} {attn} {dtype}"


def test_fused_step_is_the_last_exit():
    model = tiny("bert")
    steps = model_steps(model)
    ids, mask, types = batch()
    with torch.no_grad():
        start, end = steps.fused()(ids, mask, types)
        want_start, want_end = model(ids, mask, types)
    assert torch.equal(start, want_start[-1]) and torch.equal(end, want_end[-1])


def test_albert_slots_share_groups_by_albert_formula():
    steps = model_steps(tiny("albert", num_hidden_layers=4))
    assert len(steps.groups) == 1 and steps.layer_groups == (0, 0, 0, 0)
    steps = model_steps(tiny("albert", num_hidden_layers=4, num_hidden_groups=2))
    assert steps.layer_groups == (0, 0, 1, 1)
    assert [layer_to_group(i, 12, 3) for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert model_steps(tiny("bert")).layer_groups == (0, 1, 2), "BERT: one group per layer"
    with pytest.raises(ValueError, match="0..11"):
        layer_to_group(12, 12, 1)


def test_steps_share_the_model_weights():
    model = tiny("albert")
    steps = model_steps(model)
    assert steps.groups[0].layer is model.encoder.encoder.albert_layer_groups[0]
    assert steps.embeddings.projection is model.encoder.encoder.embedding_hidden_mapping_in
    assert all(e.head is h for e, h in zip(steps.exits, model.exits))
    assert not any(s.training for s in [steps.embeddings, *steps.groups, *steps.exits]), "steps are in eval mode"


def test_padding_is_masked_with_an_fp16_safe_fill():
    mask = torch.tensor([[1, 1, 0]])
    add = additive_attention_mask(mask, torch.float32)
    assert add.shape == (1, 1, 1, 3) and add[0, 0, 0].tolist() == [0.0, 0.0, MASK_FILL]
    assert torch.tensor(MASK_FILL, dtype=torch.float16).item() == MASK_FILL, "exact in float16"
    steps = model_steps(tiny("bert"))
    ids, mask, types = batch()
    start, end = steps.run_all_exits(ids, mask, types)
    assert torch.all(start[:, 1, -4:] == MASK_FILL) and torch.all(end[:, 1, -4:] == MASK_FILL)


def test_unsupported_layouts_are_refused():
    with pytest.raises(ModelLoadError, match="inner_group_num"):
        model_steps(tiny("albert", inner_group_num=2))
    model = tiny("bert")
    model.config.model_type = "xlnet"  # a family with no per-layer layout
    with pytest.raises(ModelLoadError, match="'xlnet' cannot be exported per layer.*supported: albert, bert, roberta"):
        model_steps(model)


def test_steps_carry_the_answerability_heads():
    """An exported exit step reads the answerability head exactly as the model does (same null score)."""
    from elma.model.multi_exit import ExitConfig

    cfg = tiny_config("bert")
    torch.manual_seed(0)
    encoder_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = MultiExitQA(encoder_config, ExitConfig(encoder_config.num_hidden_layers, answerability_head=True)).eval()
    with torch.no_grad():
        for head in model.null_heads:
            head.bias.fill_(3.0)
    ids, mask, types = batch()
    with torch.no_grad():
        want = model.all_exits(ids, mask, types)
        start, end = model_steps(model).run_all_exits(ids, mask, types)
    assert torch.equal(start, want.start) and torch.equal(end, want.end)
    assert torch.all(want.null > 2.0), "the null logit is the head's output"
