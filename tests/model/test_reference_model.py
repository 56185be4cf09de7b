"""The shipped reference model: small enough, loads with no download, finds the demo answer."""

import pytest

pytest.importorskip("torch")
from elma.cli import DEMO_CONTEXT, DEMO_QUESTION  # noqa: E402
from elma.data.squad import Example  # noqa: E402
from elma.paths import REFERENCE_MODEL_NAME, REPO_ROOT  # noqa: E402

MODEL = REPO_ROOT / "models" / REFERENCE_MODEL_NAME
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason=f"{MODEL} is not in this checkout")


def test_folder_is_compact_and_complete():
    names = {p.name for p in MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in MODEL.iterdir()) <= 50_000_000


def test_finds_the_demo_answer_and_exit_3_gives_it():
    from elma.model.loading import load_model
    from elma.predict import predict_all_exits

    model, tokenizer = load_model(str(MODEL))
    assert model.num_exits == 6 and len(model.exit_config.null_thresholds) == 6
    results = predict_all_exits(model, tokenizer, [Example("demo", "", DEMO_QUESTION, DEMO_CONTEXT, (), False)])
    # every exit from 3 on answers it: the first half of the model already finds the span
    assert [r.answers[0].prediction for r in results[2:]] == ["Rollo"] * 4
