"""--teacher: every exit learns a QA model's start/end distributions; a teacher that cannot read the student's
windows (other vocabulary, no QA heads) is refused before anything is written."""

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from conftest import WORDPIECE_VOCAB, make_tiny_model_dir, make_wordpiece_tokenizer, tiny_config  # noqa: E402

from elma.errors import ModelLoadError  # noqa: E402
from elma.train.losses import kl_to_teacher_per_exit, multi_exit_loss, with_teacher  # noqa: E402
from elma.train.trainer import train  # noqa: E402


def hf_teacher(folder: Path, qa: bool = True, vocab=None) -> Path:
    """A tiny random BERT saved as a Hugging Face checkpoint, with its tokenizer."""
    from tokenizers.models import WordPiece
    from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering

    cfg = tiny_config("bert")
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(7)
    (AutoModelForQuestionAnswering if qa else AutoModel).from_config(config).save_pretrained(folder)
    tok = make_wordpiece_tokenizer()
    if vocab is not None:
        tok.model = WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
    tok.save(str(Path(folder) / "tokenizer.json"))
    return Path(folder)


@pytest.fixture
def config(tiny_train_config):
    return tiny_train_config(warmup_ratio=0.0, max_steps=30, save_every=30, log_every=10)


def test_kl_to_the_teacher_is_zero_at_the_teacher_and_moves_only_the_student():
    g = torch.Generator().manual_seed(0)
    teacher_start, teacher_end = torch.randn(2, 9, generator=g), torch.randn(2, 9, generator=g)
    same = kl_to_teacher_per_exit(teacher_start.expand(3, -1, -1), teacher_end.expand(3, -1, -1), teacher_start,
                                  teacher_end, 2.0)
    assert same.abs().max() < 1e-6
    start = torch.randn(3, 2, 9, generator=g, requires_grad=True)
    end = torch.randn(3, 2, 9, generator=g)
    teacher_start.requires_grad_(True)
    pos = torch.tensor([0, 4])
    parts = with_teacher(multi_exit_loss(start, end, pos, pos), start, end, teacher_start, teacher_end, 2.0, 0.25)
    kl = kl_to_teacher_per_exit(start, end, teacher_start, teacher_end, 2.0)
    assert torch.allclose(parts.teacher, (kl * torch.tensor([1, 2, 3]) / 6).sum())
    assert torch.allclose(parts.total, 0.75 * multi_exit_loss(start, end, pos, pos).total + 0.25 * parts.teacher)
    parts.total.backward()
    assert teacher_start.grad is None and start.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["hf", "elma"])
def test_every_exit_learns_the_teacher(config, tmp_path, kind):
    """With the teacher's term alone (weight 1) the loss is the exits' KL to the teacher: training lowers it."""
    teacher = hf_teacher(tmp_path / "teacher") if kind == "hf" else make_tiny_model_dir(tmp_path / "teacher", "bert")
    result = train(replace(config, teacher=str(teacher), teacher_weight=1.0))
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_a_teacher_with_another_vocabulary_is_refused_at_once(config, tmp_path):
    swapped = list(WORDPIECE_VOCAB)
    swapped[10], swapped[11] = swapped[11], swapped[10]
    teacher = hf_teacher(tmp_path / "teacher", vocab=swapped)
    with pytest.raises(ModelLoadError, match="vocabulary differs from the student's .*2 differ"):
        train(replace(config, teacher=str(teacher)))
    assert not Path(config.output_dir).exists()


def test_a_teacher_without_qa_heads_is_refused(config, tmp_path):
    teacher = hf_teacher(tmp_path / "teacher", qa=False)
    with pytest.raises(ModelLoadError, match="not an extractive-QA checkpoint"):
        train(replace(config, teacher=str(teacher)))
    assert not Path(config.output_dir).exists()
