"""`elma fit-null`: a model folder's no-answer thresholds refitted on a labelled file, weights untouched, and a
calibrated default (certified with the old thresholds) dropped only on request."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
from conftest import squad_payload  # noqa: E402

from elma.cli import main as elma_main  # noqa: E402


@pytest.fixture
def model_copy(tiny_bundles, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundles.model("bert"), tmp_path / "model"))


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "real.json"
    path.write_text(json.dumps(squad_payload(copies=2)))
    return path


def _elma(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())["elma"]


def test_fitted_thresholds_are_the_best_f1_ones_and_weights_stay(model_copy, data, capsys):
    from elma.data.squad import load_squad
    from elma.metrics.squad_v2 import squad_v2_scores
    from elma.model.loading import load_model
    from elma.predict import gold_map, predict_all_exits

    weights = (model_copy / "model.safetensors").read_bytes()
    old = _elma(model_copy)["null_thresholds"]
    examples = load_squad(data)
    model, tok = load_model(str(model_copy))
    before = predict_all_exits(model, tok, examples)

    assert elma_main(["fit-null", str(model_copy), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    new = _elma(model_copy)["null_thresholds"]
    assert len(new) == len(old) == model.num_exits and new != old
    assert (model_copy / "model.safetensors").read_bytes() == weights, "only config.json changes"
    assert sorted(p.name for p in model_copy.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    gold = gold_map(examples)
    for res, t_old, t_new in zip(before, old, new):
        diffs = res.null_score_diffs(examples)
        best = squad_v2_scores(gold, res.spans(examples), na_probs=diffs)
        f1 = {t: squad_v2_scores(gold, {q: ("" if diffs[q] > t else s) for q, s in res.spans(examples).items()})["f1"]
              for t in (t_old, t_new)}
        assert f1[t_new] >= f1[t_old] and f1[t_new] == pytest.approx(best["best_f1"]), "the official best F1"
        assert f"| {res.exit_layer} | {t_old:.3f} | {t_new:.3f} | {f1[t_new]:.2f} |" in out
    model2, tok2 = load_model(str(model_copy))
    assert list(model2.exit_config.null_thresholds) == pytest.approx(new), "the runtime reads the new thresholds"


def test_a_calibrated_default_is_kept_unless_overwrite_then_dropped(model_copy, data, capsys):
    from elma.runtime.defaults import SOURCE_NONE, read_default, write_default_policy

    write_default_policy(model_copy, "static:2", {"risk": "f1"})
    config = (model_copy / "config.json").read_bytes()
    assert elma_main(["fit-null", str(model_copy), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "static:2" in err[0] and "--overwrite" in err[0], err
    assert (model_copy / "config.json").read_bytes() == config, "untouched"

    assert elma_main(["fit-null", str(model_copy), "--data", str(data), "--overwrite"]) == 0
    elma = _elma(model_copy)
    assert "default_policy" not in elma and "calibration" not in elma
    assert read_default(model_copy).source == SOURCE_NONE, "the runtime runs full depth until calibrated again"


def test_a_file_without_unanswerable_questions_is_refused(model_copy, tmp_path, capsys):
    payload = squad_payload()
    for p in payload["data"][0]["paragraphs"]:
        p["qas"] = [q for q in p["qas"] if q["answers"]]
    path = tmp_path / "answerable.json"
    path.write_text(json.dumps(payload))
    config = (model_copy / "config.json").read_bytes()
    assert elma_main(["fit-null", str(model_copy), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs both kinds" in err[0], err
    assert (model_copy / "config.json").read_bytes() == config
    assert elma_main(["fit-null", str(model_copy), "--data", str(tmp_path / "missing.json")]) == 2


def _answer(text: str, null_score_diff: float):
    from elma.runtime.spans import SpanAnswer
    return SpanAnswer(text, 0, len(text), 0.0, null_score_diff, 0, False)


def test_a_threshold_where_no_answer_everywhere_is_best_says_no_answer_everywhere():
    """The official search reports 0.0 when abstaining beats answering anything; that threshold must abstain."""
    from elma.data.squad import Answer, Example
    from elma.predict import ExitResult, calibrate_null_thresholds

    examples = [Example("a", "t", "q?", "x y", (Answer("x", 0),), False)]
    examples += [Example(f"n{i}", "t", "q?", "x y", (), True) for i in range(3)]
    # every span is wrong, every difference negative: at 0.0 all four would be answered (F1 0)
    res = ExitResult(1, [_answer("y", -2.0), _answer("y", -1.0), _answer("y", -0.5), _answer("y", -3.0)], 0.0)
    (t,) = calibrate_null_thresholds([res], examples)
    assert all(a.null_score_diff > t for a in res.answers), t

    # where answering some pays, the official threshold stands: answer "a" (difference -3), abstain on the rest
    res = ExitResult(1, [_answer("x", -3.0), _answer("y", -1.0), _answer("y", -0.5), _answer("y", -2.0)], 0.0)
    (t,) = calibrate_null_thresholds([res], examples)
    assert -3.0 <= t < -2.0
