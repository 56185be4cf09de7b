"""The PyTorch eager baselines run with oneDNN off unless asked (its per-shape primitive cache grew memory over a
long run), leave PyTorch's own setting as it was, even when the model raises, and answer the same either way."""

import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from elma.bench.configs import TorchEagerConfig, onednn  # noqa: E402
from elma.data.squad import load_squad  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402


def test_onednn_is_set_for_the_block_and_restored_even_on_error():
    before = torch.backends.mkldnn.enabled
    with onednn(torch, not before):
        assert torch.backends.mkldnn.enabled is (not before)
    assert torch.backends.mkldnn.enabled is before
    with pytest.raises(RuntimeError), onednn(torch, not before):
        raise RuntimeError("the model failed")
    assert torch.backends.mkldnn.enabled is before


@pytest.mark.parametrize("use_onednn", [False, True])
def test_the_eager_forward_runs_with_the_asked_setting(tiny_bundles, tiny_squad, use_onednn):
    examples = load_squad(tiny_squad, check_offsets=False)[:3]
    seen = []
    with Runtime.open(tiny_bundles.bundle("bert"), policy="none") as rt:
        cfg = TorchEagerConfig(tiny_bundles.model("bert"), rt, use_onednn=use_onednn)
        reference = TorchEagerConfig(tiny_bundles.model("bert"), rt, use_onednn=not use_onednn)
        forward = cfg.model.forward

        def spy(*args, **kwargs):
            seen.append(torch.backends.mkldnn.enabled)
            return forward(*args, **kwargs)

        cfg.model.forward = spy
        before = torch.backends.mkldnn.enabled
        answers = [cfg.answer(ex).prediction for ex in examples]
        assert torch.backends.mkldnn.enabled is before
        assert answers == [reference.answer(ex).prediction for ex in examples]
    assert seen == [use_onednn] * len(examples)
