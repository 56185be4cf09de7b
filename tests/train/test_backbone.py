"""What `elma train MODEL` accepts: every exportable family (bare config, HF folder, HF model id from the cache),
refusals before anything is written (DeBERTa, an id that is offline and not cached)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from conftest import WORDPIECE_VOCAB, tiny_config  # noqa: E402

from elma.errors import ModelLoadError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.model.steps import model_steps  # noqa: E402
from elma.train.backbone import build_model  # noqa: E402
from elma.train.trainer import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path, tiny_squad, wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    return TrainConfig(model="-", tokenizer=str(tok), train_files=(str(tiny_squad),), output_dir=str(tmp_path / "run"),
                       max_seq_length=48, doc_stride=8, max_query_length=12, batch_size=4, learning_rate=3e-3,
                       max_steps=2, save_every=2, log_every=1, seed=0, threads=1)


def bare_config(tmp_path, name) -> Path:
    path = tmp_path / f"tiny-{name}.json"
    path.write_text(json.dumps(tiny_config(name)))
    return path


@pytest.mark.parametrize("name", ["bert", "albert", "roberta", "electra", "distilbert", "mobilebert"])
def test_every_exportable_family_trains_from_a_config(config, tmp_path, name):
    result = train(replace(config, model=str(bare_config(tmp_path, name))))
    assert result.steps == 2 and all(x == x for x in result.losses)
    model = MultiExitQA.from_pretrained(config.output_dir)
    assert model.config.model_type == name
    assert model_steps(model).num_layers == model.num_exits


def test_deberta_is_refused_before_anything_is_written(config, tmp_path):
    with pytest.raises(ModelLoadError, match="deberta-v2.*cannot be exported per layer.*relative-position"):
        train(replace(config, model=str(bare_config(tmp_path, "deberta-v2"))))
    assert not Path(config.output_dir).exists()


def save_hf_backbone(folder: Path, name: str, tokenizer: str) -> Path:
    """A pretrained-style Hugging Face folder: config.json, model.safetensors, and a tokenizer file."""
    from transformers import AutoConfig, AutoModel

    cfg = tiny_config(name)
    torch.manual_seed(1)
    AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(folder)
    if tokenizer == "vocab.txt":
        (folder / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n")
    else:
        from conftest import make_wordpiece_tokenizer

        make_wordpiece_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("name, tokenizer", [("distilbert", "tokenizer.json"), ("bert", "vocab.txt")])
def test_a_hugging_face_folder_trains_with_new_heads(config, tmp_path, name, tokenizer):
    """The encoder's pretrained weights are kept; a folder with only vocab.txt gets transformers' fast tokenizer."""
    folder = save_hf_backbone(tmp_path / "hf", name, tokenizer)
    from safetensors.torch import load_file

    pretrained = load_file(str(folder / "model.safetensors"))
    model, tok = build_model(replace(config, model=str(folder), tokenizer=None))
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(model.encoder.state_dict()[key], pretrained[key])
    assert tok.token_to_id("[CLS]") == 2 and tok.get_vocab_size() == len(WORDPIECE_VOCAB)
    assert train(replace(config, model=str(folder), tokenizer=None)).steps == 2


def run_cli(args, env_extra, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "elma.cli", "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_an_uncached_model_id_offline_exits_3_and_leaves_nothing(config, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["albert-base-v2", "--train-file", *config.train_files, "-o", str(out)],
                   {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}, tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "albert-base-v2" in lines[0] and "not in the Hugging Face cache" in lines[0], lines
    assert not out.exists()


def test_a_model_id_in_the_cache_trains_offline(config, tmp_path):
    """A hub id resolves through the Hugging Face cache (HF_HUB_OFFLINE=1: no network is tried)."""
    cache = tmp_path / "hub"
    repo = cache / "models--elma-test--tiny-electra"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_hf_backbone(repo / "snapshots" / commit, "electra", "tokenizer.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "out"
    proc = run_cli(["elma-test/tiny-electra", "--train-file", *config.train_files, "-o", str(out),
                    *"--max-seq-length 48 --doc-stride 8 --max-query-length 12 --batch-size 4 --max-steps 2 "
                     "--threads 1".split()],
                   {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["steps"] == 2
    assert MultiExitQA.from_pretrained(out).config.model_type == "electra"
