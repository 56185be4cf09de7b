"""Every encoder family ELMA trains can be cut per layer, exported and run (RoBERTa, ELECTRA, DistilBERT, MobileBERT
next to BERT/ALBERT); DeBERTa cannot, and is refused by name with the reason."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import PASSAGES, tiny_config  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from elma.errors import ModelLoadError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.model.steps import check_steps_supported, model_steps  # noqa: E402

FAMILIES = ["roberta", "electra", "distilbert", "mobilebert"]


def tiny(name: str) -> MultiExitQA:
    cfg = tiny_config(name)
    torch.manual_seed(0)
    return MultiExitQA(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()


def batch(seq: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (2, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0
    ids[1, seq - 4:] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1  # what ELMA's windows carry for the context, whatever the family
    return ids, mask, types


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_chained_steps_are_the_model_exactly(name, attn):
    model = tiny(name)
    model.encoder.set_attn_implementation(attn)
    ids, mask, types = batch()
    with torch.no_grad():
        want = model.all_exits(ids, mask, types)
    assert want.start.shape == (2, 2, 12) and torch.isfinite(want.start[:, 0]).all()
    steps = model_steps(model)
    for dtype in (torch.int64, torch.int32):
        start, end = steps.run_all_exits(*(t.to(dtype) for t in (ids, mask, types)))
        assert torch.equal(start, want.start) and torch.equal(end, want.end), f"{name} {attn} {dtype}"


def test_roberta_reads_the_context_as_type_0():
    """RoBERTa has one token type: the windows' 1s on the context are read as 0s, never an index error."""
    model = tiny("roberta")
    ids, mask, types = batch()
    with torch.no_grad():
        a = model.all_exits(ids, mask, types)
        b = model.all_exits(ids, mask, torch.zeros_like(types))
    assert torch.equal(a.start, b.start)


@pytest.mark.parametrize("name", ["deberta-v2"])
def test_deberta_is_refused_at_once_with_the_reason(name):
    cfg = tiny_config(name)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with pytest.raises(ModelLoadError, match="deberta-v2.*relative-position"):
        check_steps_supported(config)
    with pytest.raises(ModelLoadError, match="relative-position"):
        model_steps(MultiExitQA(config))


@pytest.mark.parametrize("name", FAMILIES)
def test_export_and_runtime_reproduce_the_model(tiny_bundles, name):
    """The exported per-layer chain and the runtime give the PyTorch model's exits and answers."""
    pytest.importorskip("onnxruntime")
    from elma.export.verify import cpu_session
    from elma.runtime.bundle import load_bundle
    from elma.runtime.engine import Runtime

    bundle_dir = tiny_bundles.bundle(name)
    bundle = load_bundle(bundle_dir)
    ids, mask, types = (t.numpy().astype(np.int32) for t in batch(20))
    hidden = cpu_session(bundle.embeddings).run(None, {"input_ids": ids, "token_type_ids": types})[0]
    starts = []
    for layer, head in zip(bundle.layers, bundle.exits):
        hidden = cpu_session(layer).run(None, {"hidden_states": hidden, "attention_mask": mask})[0]
        starts.append(cpu_session(head).run(None, {"hidden_states": hidden, "attention_mask": mask})[0])
    model = MultiExitQA.from_pretrained(tiny_bundles.model(name))
    with torch.no_grad():
        want = model.all_exits(*(torch.from_numpy(a.astype(np.int64)) for a in (ids, mask, types))).start.numpy()
    assert np.abs(np.stack(starts) - want).max() <= 1e-4
    assert np.abs(want[:, :, 0]).max() > 0.1, "logits are O(1), so 1e-4 is a real bound"
    questions = [(q, c) for c, qas in PASSAGES for q, _ in qas]
    with Runtime.open(bundle_dir) as rt, Runtime.open(tiny_bundles.model(name)) as ref:
        for a, b in zip(rt.ask_batch(questions, policy="none"), ref.ask_batch(questions, policy="none")):
            assert (a.text, a.no_answer, a.exit_layer) == (b.text, b.no_answer, b.exit_layer)
            assert a.score == pytest.approx(b.score, abs=1e-3)
