"""Training with skimming (``elma train --skim``): a threshold of 0 trains exactly as without skimming (same
losses, same weights), the drop is the runtime's (the kept tokens' logits equal the torch runtime's after it
removes the dropped ones), labelled tokens stay, and dropped tokens leave the later exits' loss."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import PASSAGES  # noqa: E402

from elma.model.multi_exit import MASK_FILL, MultiExitQA  # noqa: E402
from elma.train.skim import SkimmedAllExits, keep_mask, parse_skim  # noqa: E402
from elma.train.trainer import TrainConfig, train  # noqa: E402

LONG = " ".join(c for c, _ in PASSAGES) * 2


@pytest.fixture
def config(tiny_train_config):
    return tiny_train_config(warmup_ratio=0.1, max_steps=6, save_every=100, log_every=3)


def _weights(folder):
    return MultiExitQA.from_pretrained(folder).state_dict()


def test_threshold_zero_trains_exactly_as_without_skimming(config, tmp_path):
    """Dropout on (the tiny config's 0.1): the layer-by-layer forward draws the same random numbers in the same
    order as the encoder's, so the losses and the weights are those of plain training."""
    plain = train(replace(config, output_dir=str(tmp_path / "plain")))
    skim0 = train(replace(config, output_dir=str(tmp_path / "skim0"), skim="skim:1,0+skim:2,0"))
    assert len(plain.losses) == len(skim0.losses) == 6
    assert skim0.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)
    # Weights: equal up to float rounding (the per-layer mask is -1e4 where the encoder's is finfo.min, summation
    # order differs), which Adam's normalised steps can bring to ~1e-4 on parameters whose gradient is near 0;
    # a step in the wrong direction moves a weight by up to lr = 3e-3 per step.
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "skim0")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-3), k
    # A real threshold drops tokens: the same run then trains differently.
    skimmed = train(replace(config, output_dir=str(tmp_path / "skimmed"), skim="skim:1,0.05"))
    assert skimmed.losses[0] != pytest.approx(plain.losses[0], rel=1e-5), "the later exits ran on fewer tokens"


def _batch(model_dir, items, labels=None):
    from elma.data.features import WindowConfig, build_windows
    from elma.data.squad import Example
    from elma.tokenization import load_tokenizer, pad_token_id
    from elma.train.batching import collate

    tok = load_tokenizer(Path(model_dir) / "tokenizer.json")
    examples = [Example(str(i), "", q, c, (), False) for i, (q, c) in enumerate(items)]
    windows = build_windows(examples, tok, WindowConfig(64, 16, 16), with_labels=False)
    batch = collate(windows, pad_token_id(tok))
    if labels is not None:
        batch["start_positions"], batch["end_positions"] = labels
    else:
        batch["start_positions"] = batch["end_positions"] = torch.zeros(len(windows), dtype=torch.long)
    return windows, batch


def test_the_drop_is_the_runtimes_and_the_kept_tokens_see_what_they_see_at_inference(tiny_bundles):
    """Eval mode: the later exits' logits on the kept tokens equal the torch runtime's, which runs the later layers
    on the kept tokens alone; dropped tokens carry MASK_FILL there."""
    from elma.runtime.engine import Runtime

    folder = tiny_bundles.model("bert")
    items = [(q, c) for c, qas in PASSAGES for q, _ in qas][:4] + [("Where did the dog sleep?", LONG)]
    windows, batch = _batch(folder, items)
    model = MultiExitQA.from_pretrained(folder).eval()
    module = SkimmedAllExits(model, parse_skim("skim:1,0.03"))
    assert not model.training, "building the steps keeps the model's mode"
    with torch.no_grad():
        out = module(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["context_mask"],
                     batch["start_positions"], batch["end_positions"])
    with Runtime.open(folder, backend="torch", policy="none") as rt:
        recorded = [w for q in rt.record_exits(items, skim="none+skim:1,0.03") for w in q]
    assert len(recorded) == len(windows) and any(len(w) == 64 for w in windows)
    dropped = 0
    for j, (window, logits) in enumerate(recorded):
        n = len(window)
        live = np.isfinite(logits[:, 0, :n])  # (L, n): what each layer ran in the runtime
        assert np.array_equal(out.live[:, j, :n].numpy(), live)
        dropped += int((~live[-1]).sum())
        for layer in range(logits.shape[0]):
            got = out.start[layer, j, :n].numpy()
            np.testing.assert_allclose(got[live[layer]], logits[layer, 0][live[layer]], atol=2e-4)
            assert (got[~live[layer]] == MASK_FILL).all()
    assert dropped > 0, "the threshold drops tokens on this random model"


def test_labelled_tokens_are_kept_and_question_and_specials_stay(tiny_bundles):
    folder = tiny_bundles.model("bert")
    windows, batch = _batch(folder, [("Where did the dog sleep?", LONG)])
    batch = {k: v[:1] for k, v in batch.items()}  # the first window
    T = batch["input_ids"].shape[1]
    start = torch.full((1, T), -5.0)
    end = torch.full((1, T), -5.0)
    ctx = batch["context_mask"]
    best = int(torch.nonzero(ctx[0]).flatten()[3])
    start[0, best] = end[0, best] = 10.0  # one confident candidate; every other context token is ruled out
    label = int(torch.nonzero(ctx[0]).flatten()[-2])  # far from it
    stage = parse_skim("skim:1,0.01")[0]
    mask = keep_mask(start, end, batch["attention_mask"], ctx, stage, torch.tensor([label]), torch.tensor([label]))
    kept = torch.nonzero(mask[0]).flatten().tolist()
    assert label in kept, "the labelled token stays in training"
    assert all(i in kept for i in range(len(windows[0])) if not ctx[0, i]), "CLS, question and separators stay"
    assert all(i in kept for i in range(best - stage.margin, best + stage.margin + 1)), "the margin around the best span"
    assert len(kept) < int(batch["attention_mask"].sum()), "the rest of the context goes"
    unlabelled = keep_mask(start, end, batch["attention_mask"], ctx, stage, torch.tensor([0]), torch.tensor([0]))
    assert label not in torch.nonzero(unlabelled[0]).flatten().tolist()


def test_skim_setting_is_checked():
    assert [s.spec for s in parse_skim("skim:1,0.01+skim:2,0.1")] == ["skim:1,0.01", "skim:2,0.1"]
    for bad, msg in [("entropy:1,1", "skim stages"), ("skim:1", "skim stage is"), ("skim:3,0.1", "leaves no layer")]:
        with pytest.raises(ValueError, match=msg):
            parse_skim(bad, num_layers=3)
    with pytest.raises(ValueError, match="skim stages"):
        TrainConfig(model="m", train_files=("f",), output_dir="o", skim="none+skim:1,0.1")
