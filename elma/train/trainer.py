"""``elma train``: fine-tune a multi-exit QA model, resumable after a kill.

The state that a resumed run needs (weights, AdamW moments, scheduler, step,
RNG) is one ``checkpoint.pt`` written atomically every ``save_every`` steps;
batches are a pure function of (seed, epoch), so a resumed run sees exactly
the batches that an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from elma.data.features import WindowConfig, build_windows
from elma.data.squad import load_many
from elma.errors import DataError, ModelLoadError, UsageError
from elma.fsutil import Output, atomic_write, check_outputs, publish_dir, write_json
from elma.model.multi_exit import CONFIG_NAME, ExitConfig, MultiExitQA
from elma.tokenization import load_tokenizer, pad_token_id, save_tokenizer
from elma.train.batching import collate, epoch_batches
from elma.train.losses import multi_exit_loss, parse_exit_weights

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. CLI flags map 1:1 onto these fields."""

    model: str  # a pretrained HF encoder folder, an ELMA model folder, or an encoder config.json (random init)
    train_files: Tuple[str, ...]  # SQuAD 1.1/2.0 JSON files
    output_dir: str
    tokenizer: Optional[str] = None  # tokenizer.json / spiece.model / folder; default: the model folder's
    eval_file: Optional[str] = None  # held-out SQuAD file: per-exit scores and null-threshold calibration
    max_seq_length: int = 384  # tokens per window
    doc_stride: int = 128  # overlap of consecutive windows, tokens
    max_query_length: int = 64  # tokens
    batch_size: int = 32  # windows per optimiser step
    learning_rate: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW, not applied to biases and LayerNorm weights
    warmup_ratio: float = 0.1  # share of the steps with a linear warm-up
    epochs: float = 2.0  # passes over the windows (ignored when max_steps is set)
    max_steps: Optional[int] = None  # total optimiser steps
    max_grad_norm: float = 1.0  # gradient clipping
    distill_rate: float = 0.0  # a in (1-a)*span + a*KL(last exit || earlier exits)
    temperature: float = 2.0  # distillation softmax temperature
    exit_weights: str = "linear"  # exits' loss weights: linear (l/sum l), uniform, or a comma list
    answerability_head: bool = False  # new models: an answerability head per exit (ExitConfig.answerability_head)
    answerability_weight: float = 1.0  # weight of the answerability heads' binary loss
    freeze_word_embeddings: bool = False  # keep the word-embedding matrix fixed (half of MiniLM's weights)
    two_stage: bool = False  # freeze the encoder and the last head, train the earlier heads
    group_by_length: bool = True  # batch windows of similar length (less padding)
    bf16: bool = False  # CPU autocast to bfloat16 (about 1.5x faster on AVX512-BF16 CPUs); weights stay fp32
    seed: int = 42
    save_every: int = 200  # steps between checkpoints
    log_every: int = 20  # steps between log lines
    max_examples: Optional[int] = None  # use only the first N examples (smoke runs)
    eval_batch_size: int = 64
    threads: Optional[int] = None  # torch intra-op threads; default: torch's choice

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0 (got {self.learning_rate})")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if not 0 <= self.distill_rate <= 1:
            raise ValueError(f"distill_rate must be in [0, 1] (got {self.distill_rate})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (got {self.max_steps})")
        if self.answerability_weight < 0:
            raise ValueError(f"answerability_weight must be >= 0 (got {self.answerability_weight})")
        parse_exit_weights(self.exit_weights)
        WindowConfig(self.max_seq_length, self.doc_stride, self.max_query_length)


@dataclass
class TrainResult:
    steps: int
    final_loss: float  # mean total loss over the last log interval
    wall_s: float
    tokens_per_s: float  # real (unpadded) tokens per second of this process' training steps
    first_step: int = 0  # the step this process started from (> 0 after --resume)
    losses: List[float] = field(default_factory=list)  # loss of every step this process ran
    eval: Optional[List[dict]] = None


def build_model(config: TrainConfig) -> Tuple[MultiExitQA, object]:
    """The model to train and its tokenizer, from whatever ``config.model`` points at."""
    path = Path(config.model)
    window = dict(max_seq_length=config.max_seq_length, doc_stride=config.doc_stride,
                  max_query_length=config.max_query_length, answerability_head=config.answerability_head)
    if path.is_file() and path.suffix == ".json":
        from transformers import AutoConfig

        cfg = json.loads(path.read_text())
        encoder_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = MultiExitQA(encoder_config, ExitConfig(encoder_config.num_hidden_layers, **window))
        tok_src = config.tokenizer or path.parent
    elif (path / CONFIG_NAME).is_file() and "elma" in json.loads((path / CONFIG_NAME).read_text()):
        model = MultiExitQA.from_pretrained(path)
        tok_src = config.tokenizer or path
        if config.answerability_head and not model.exit_config.answerability_head:
            raise UsageError(f"{path}: this model has no answerability heads; --answerability-head is for new models")
    elif path.is_dir():
        model = MultiExitQA.from_backbone(path, window)
        tok_src = config.tokenizer or path
    else:
        raise ModelLoadError(f"{path}: not a model folder or encoder config.json")
    return model, load_tokenizer(tok_src)


def _optimizer(model: MultiExitQA, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_output_dir(config: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse (exit 2) an ``output_dir`` that is taken, before anything is loaded or written.

    ``resume`` needs the checkpoint there; otherwise a non-empty folder is replaced only with ``overwrite``,
    and only when it holds an earlier run (a checkpoint or a model config).
    """
    out = Path(config.output_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and overwrite:
        raise UsageError("--resume continues the run in -o and --overwrite starts a new one there: pass one of them")
    if resume:
        if not ckpt_path.is_file():
            raise UsageError(f"{ckpt_path}: no checkpoint to resume from; run without --resume")
        return
    hint = "add --resume to continue its checkpoint" if ckpt_path.is_file() else ""
    check_outputs([Output(out, "-o", folder=True, what="a training run or model folder",
                          replaces=(CHECKPOINT_NAME, CONFIG_NAME), hint=hint)],
                  overwrite, inputs=[config.model, config.tokenizer, config.eval_file, *config.train_files])


def check_inputs(config: TrainConfig) -> Optional[list]:
    """Fail with one line on a missing or malformed input before anything is written. Returns the parsed
    ``eval_file`` (None without one), so that a bad held-out file is found before training, not after."""
    from elma.data.squad import load_squad

    for f in config.train_files:
        if not Path(f).is_file():
            raise DataError(f"{f}: no such training file (--train-file)")
    if config.tokenizer is not None and not Path(config.tokenizer).exists():
        raise UsageError(f"{config.tokenizer}: no such tokenizer file or folder (--tokenizer)")
    if not Path(config.model).exists():
        raise ModelLoadError(f"{config.model}: no such model folder or encoder config.json")
    return load_squad(Path(config.eval_file)) if config.eval_file else None


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run (or resume) one training job; writes the model folder and ``train_state.json`` into output_dir.

    The output folder is checked first and created only once the inputs have loaded; an error before the
    first checkpoint leaves no folder behind. With ``overwrite``, an earlier run's folder is replaced only when
    the new run has finished (it is built in a temporary folder beside it, which a kill does not make resumable).

    Raises:
        OutputExistsError: output_dir is taken (see ``check_output_dir``). UsageError, DataError, ModelLoadError:
            bad settings or inputs.
    """
    out = Path(config.output_dir)
    check_output_dir(config, resume, overwrite)
    heldout = check_inputs(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model, tokenizer = build_model(config)
    try:
        parse_exit_weights(config.exit_weights, model.num_exits)
    except ValueError as err:
        raise UsageError(str(err)) from err
    examples = load_many([Path(f) for f in config.train_files])
    if config.max_examples:
        examples = examples[: config.max_examples]
    wcfg = WindowConfig(config.max_seq_length, config.doc_stride, config.max_query_length)
    t0 = time.monotonic()
    windows = build_windows(examples, tokenizer, wcfg)
    n_null = sum(w.start_position == 0 for w in windows)
    logger.info("%d examples -> %d windows (%d labelled no-answer) in %.1f s", len(examples), len(windows),
                n_null, time.monotonic() - t0)
    # --overwrite: the earlier run stays in place until this one has finished
    staging = overwrite and not resume and out.is_dir() and any(out.iterdir())
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(out.parent))) if staging else out
    existed = out.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = _train_in(work, config, resume, model, tokenizer, windows, heldout)
        if staging:
            publish_dir(work, out, overwrite=True)
    except BaseException:
        if staging:
            shutil.rmtree(work, ignore_errors=True)
        elif not existed and not any(work.iterdir()):
            work.rmdir()  # failed before its first checkpoint: no empty folder left behind
        raise
    return result


def _train_in(out: Path, config: TrainConfig, resume: bool, model: MultiExitQA, tokenizer, windows, heldout
              ) -> TrainResult:
    """The training loop, writing its checkpoint, model and state into ``out``."""
    ckpt_path = out / CHECKPOINT_NAME
    pad_id = pad_token_id(tokenizer)
    lengths = [len(w) for w in windows]
    steps_per_epoch = math.ceil(len(windows) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(config.warmup_ratio * total)

    train_exits = slice(None)
    if config.two_stage:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        for p in model.exits[-1].parameters():
            p.requires_grad_(False)
        if model.null_heads is not None:
            model.null_heads[-1].requires_grad_(False)
        train_exits = slice(0, model.num_exits - 1)
    if config.freeze_word_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)
    optimizer = _optimizer(model, config)
    scheduler = _linear_schedule(optimizer, warmup, total)

    step = 0
    if resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["config"] != asdict(config):
            raise UsageError(f"{ckpt_path}: was written with other settings; resume with the same command")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        logger.info("resumed from step %d of %d", step, total)

    model.train()
    if config.two_stage:
        model.encoder.eval()  # frozen: no dropout either
    losses: List[float] = []
    real_tokens = 0
    t_start = time.monotonic()
    bar = _progress(total, step)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        for idx in epoch_batches(lengths, config.batch_size, config.seed, epoch, config.group_by_length)[offset:]:
            if step >= total:
                break
            batch = collate([windows[i] for i in idx], pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = model.all_exits(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            parts = multi_exit_loss(logits.start.float(), logits.end.float(), batch["start_positions"],
                                    batch["end_positions"], config.distill_rate, config.temperature, train_exits,
                                    config.exit_weights, logits.null, config.answerability_weight)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(parts.total.item())
            real_tokens += int(batch["attention_mask"].sum())
            bar.update(1)
            bar.set_postfix(loss=f"{parts.total.item():.3f}")
            if step % config.log_every == 0 or step == total:
                elapsed = time.monotonic() - t_start
                rate = real_tokens / max(elapsed, 1e-9)
                eta_s = elapsed / len(losses) * (total - step)
                logger.info("step %d/%d loss %.4f span %.4f distill %.4f answerability %.4f per-exit %s lr %.2e "
                            "%.0f tok/s ETA %.0f min", step, total, _mean(losses[-config.log_every:]),
                            parts.span.item(), parts.distill.item(), parts.answerability.item(),
                            " ".join(f"{x:.2f}" for x in parts.per_exit.tolist()),
                            scheduler.get_last_lr()[0], rate, eta_s / 60)
            if step % config.save_every == 0 or step == total:
                _save_checkpoint(ckpt_path, model, optimizer, scheduler, step, config)
    bar.close()
    wall_s = time.monotonic() - t_start
    result = TrainResult(step, _mean(losses[-config.log_every:]) if losses else float("nan"), wall_s,
                         real_tokens / max(wall_s, 1e-9), step - len(losses), losses)
    model.eval()
    # thresholds and the exit policy calibrated for the weights we started from no longer hold; --eval-file
    # recalibrates the thresholds, `elma calibrate` the policy
    model.exit_config = replace(model.exit_config, null_thresholds=(), default_policy=None, calibration=None)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    if config.eval_file:
        result.eval = evaluate_and_calibrate(model, tokenizer, config, out, heldout)
    write_json(out / "train_state.json", {"config": asdict(config), "steps": step, "final_loss": result.final_loss,
                                          "wall_s_this_process": wall_s, "tokens_per_s": result.tokens_per_s,
                                          "first_step": result.first_step, "losses": losses, "eval": result.eval})
    return result


def evaluate_and_calibrate(model: MultiExitQA, tokenizer, config: TrainConfig, out: Path,
                           examples: Optional[list] = None) -> List[dict]:
    """Calibrate each exit's null threshold on the held-out file (``examples``: already loaded), store it, and
    score every exit."""
    from elma.data.squad import load_squad
    from elma.predict import calibrate_null_thresholds, predict_all_exits, score_exits

    if examples is None:
        examples = load_squad(Path(config.eval_file))
    results = predict_all_exits(model, tokenizer, examples, batch_size=config.eval_batch_size)
    thresholds = calibrate_null_thresholds(results, examples)
    for res, t in zip(results, thresholds):
        res.null_threshold = t
        res.answers = [_rethreshold(a, t) for a in res.answers]
    model.exit_config = replace(model.exit_config, null_thresholds=tuple(thresholds))
    model.save_pretrained(out)
    rows = score_exits(results, examples)
    write_json(out / "eval_results.json", {"eval_file": config.eval_file, "exits": rows})
    for r in rows:
        logger.info("exit %d: EM %.2f F1 %.2f HasAns F1 %s NoAns F1 %s (null threshold %.3f)", r["exit_layer"],
                    r["exact"], r["f1"], r.get("HasAns_f1"), r.get("NoAns_f1"), r["null_threshold"])
    return rows


def _rethreshold(answer, threshold: float):
    return replace(answer, no_answer=answer.window < 0 or answer.null_score_diff > threshold)


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, config: TrainConfig) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state(), "step": step, "config": asdict(config)}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    logger.info("checkpoint at step %d -> %s", step, path)


def _mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=None)  # None: off when stderr is not a terminal
