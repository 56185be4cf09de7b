"""`elma train --config recipe.toml`: the shipped recipes are valid, flags override the file, bad files are refused."""

import json
from pathlib import Path

import pytest

from elma.errors import UsageError
from elma.train.recipe import read_recipe

pytest.importorskip("torch")
from elma.train.trainer import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid_configs(path):
    config = TrainConfig(output_dir="-", **read_recipe(path))
    assert config.train_files and config.max_seq_length in (128, 384)


def test_the_thesis_recipe_is_albert_base_on_squad2():
    values = read_recipe(ROOT / "recipes" / "albert-base-v2-squad2.toml")
    assert values["model"] == "albert-base-v2" and values["train_files"] == ("data/squad2/train-v2.0.json",)
    # the thesis, chapter 5.1 and tables 5.2-5.5: 128 tokens, lr 3e-5, batch 64, 5 * 2 epochs
    assert (values["max_seq_length"], values["learning_rate"], values["batch_size"], values["epochs"]) == (128, 3e-5, 64, 10)


@pytest.mark.parametrize("text, match", [
    ("batch_sise = 4", "unknown setting 'batch_sise'"),
    ("batch_size = 4.5", "batch_size must be int"),
    ("bf16 = 1", "bf16 must be bool"),
    ("train_files = [1, 2]", "train_files must be a list of strings"),
    ("learning_rate = '1e-4'", "learning_rate must be float"),
    ("batch_size = ", "not valid TOML"),
])
def test_bad_recipes_are_refused_with_the_key(tmp_path, text, match):
    path = tmp_path / "r.toml"
    path.write_text(text + "\n")
    with pytest.raises(UsageError, match=match):
        read_recipe(path)


def test_a_missing_recipe_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no such recipe"):
        read_recipe(tmp_path / "none.toml")


def test_flags_override_the_recipe(tmp_path, tiny_squad, wordpiece_tokenizer, capsys):
    from elma.cli import main

    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{ROOT / "tests/fixtures/tiny-bert.json"}"\ntokenizer = "{tok}"\n'
                      f'train_files = ["{tiny_squad}"]\nmax_seq_length = 48\ndoc_stride = 8\nmax_query_length = 12\n'
                      f'batch_size = 4\nmax_steps = 5\nbf16 = true\nthreads = 1\nlearning-rate = 1e-3\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "-o", str(out), "--max-steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    state = json.loads((out / "train_state.json").read_text())["config"]
    assert state["max_steps"] == 2 and state["bf16"] is True and state["learning_rate"] == 1e-3


def test_model_and_data_are_needed_somewhere(tmp_path, capsys):
    from elma.cli import main

    recipe = tmp_path / "recipe.toml"
    recipe.write_text("batch_size = 4\n")
    assert main(["train", "--config", str(recipe), "-o", str(tmp_path / "run")]) == 2
    assert "MODEL and --train-file needed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
