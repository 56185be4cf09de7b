"""MultiExitQA: every exit's logits, padding masked, save/load round trip, ALBERT's shared layer."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoConfig  # noqa: E402

from elma.errors import ModelLoadError  # noqa: E402
from elma.model.multi_exit import MASK_FILL, WEIGHTS_NAME, ExitConfig, MultiExitQA  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tiny(name: str) -> MultiExitQA:
    cfg = json.loads((FIXTURES / f"tiny-{name}.json").read_text())
    torch.manual_seed(0)
    return MultiExitQA(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()


def batch(seq: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (2, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0  # second row is padded
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("name", ["albert", "bert"])
def test_one_exit_per_layer_and_padding_masked(name):
    model = tiny(name)
    ids, mask, types = batch()
    start, end = model(ids, mask, types)
    layers = model.config.num_hidden_layers
    assert start.shape == end.shape == (layers, 2, 12)
    assert torch.all(start[:, 1, -4:] == MASK_FILL) and torch.all(end[:, 1, -4:] == MASK_FILL)
    assert torch.all(start[:, 0] > MASK_FILL)
    # different exits answer differently: each has its own head on its own layer
    assert not torch.allclose(start[0], start[-1])


def test_albert_layers_share_weights():
    model = tiny("albert")
    assert len(model.encoder.encoder.albert_layer_groups) == 1, "albert-base runs one layer group in every slot"
    cfg = model.config.to_dict()
    cfg.update(num_hidden_layers=2 * model.config.num_hidden_layers)
    deeper = MultiExitQA(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    count = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert count(deeper) == count(model), "twice the layers, the same encoder weights"
    assert deeper.num_exits == 2 * model.num_exits


@pytest.mark.parametrize("name", ["albert", "bert"])
def test_save_load_round_trip(tmp_path, name):
    model = tiny(name)
    model.exit_config = ExitConfig(model.num_exits, null_thresholds=(0.5,) * model.num_exits)
    model.save_pretrained(tmp_path)
    loaded = MultiExitQA.from_pretrained(tmp_path)
    ids, mask, types = batch()
    with torch.no_grad():
        a, b = model(ids, mask, types), loaded(ids, mask, types)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert loaded.exit_config.null_thresholds == (0.5,) * model.num_exits
    assert not list(tmp_path.glob(".*")), "no temporary file is left behind"


def test_fp16_checkpoint_is_half_the_size_and_close(tmp_path):
    model = tiny("bert")
    model.save_pretrained(tmp_path / "fp32")
    model.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    size32 = (tmp_path / "fp32" / WEIGHTS_NAME).stat().st_size
    size16 = (tmp_path / "fp16" / WEIGHTS_NAME).stat().st_size
    assert size16 < 0.55 * size32
    loaded = MultiExitQA.from_pretrained(tmp_path / "fp16")
    ids, mask, types = batch()
    with torch.no_grad():
        diff = (model(ids, mask, types)[0] - loaded(ids, mask, types)[0]).abs()
    assert diff[:, 0].max() < 1e-2


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        MultiExitQA.from_pretrained(tmp_path)
    tiny("bert").save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelLoadError, match=WEIGHTS_NAME):
        MultiExitQA.from_pretrained(tmp_path)


def test_weights_from_another_config_are_refused(tmp_path):
    tiny("bert").save_pretrained(tmp_path / "bert")
    tiny("albert").save_pretrained(tmp_path / "albert")
    (tmp_path / "bert" / WEIGHTS_NAME).replace(tmp_path / "albert" / WEIGHTS_NAME)
    with pytest.raises(ModelLoadError, match="does not match"):
        MultiExitQA.from_pretrained(tmp_path / "albert")
