"""``elma train``: fine-tune a multi-exit QA model on a CPU, a GPU or several, resumable after a kill.

The pieces, each behind its own module and test:

- ``backbone``: what MODEL names (config file, ELMA folder, Hugging Face folder or model id) -> model, tokenizer;
- ``device``: ``--device``, autocast and the fp16 gradient scaler, random states;
- ``distributed``: torchrun processes, the global batch cut into micro-batches, DDP;
- ``losses`` (and ``teacher``): the multi-exit loss, with a teacher model's distributions when asked;
- ``loop``: one optimiser step and the batches that feed it;
- ``checkpoint``: ``checkpoint.pt``, loadable on any device, and which settings a resume may change.

The state that a resumed run needs (weights, AdamW moments, scheduler, step,
RNG) is one ``checkpoint.pt`` written atomically every ``save_every`` steps;
batches are a pure function of (seed, epoch), so a resumed run sees exactly
the batches that an uninterrupted one would.
"""

from __future__ import annotations

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
from elma.errors import DataError, ElmaError, UsageError
from elma.fsutil import Output, check_outputs, publish_dir, write_json
from elma.model.multi_exit import CONFIG_NAME, MultiExitQA
from elma.tokenization import pad_token_id, save_tokenizer
from elma.train import checkpoint
from elma.train.backbone import build_model
from elma.train.batching import epoch_batches
from elma.train.checkpoint import CHECKPOINT_NAME
from elma.train.device import DEVICE_PATTERN, precision_for, resolve_device, rng_state, set_rng_state
from elma.train.distributed import DistEnv, wrap
from elma.train.loop import MODEL_INPUTS, StepBatches, iterate, train_step
from elma.train.losses import multi_exit_loss, parse_exit_weights, with_teacher
from elma.train.skim import SKIM_INPUTS, mask_teacher

logger = logging.getLogger(__name__)
__all__ = ["CHECKPOINT_NAME", "TrainConfig", "TrainResult", "build_model", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run. CLI flags map 1:1 onto these fields."""

    model: str  # HF encoder folder or model id, ELMA model folder, or encoder config.json (random init)
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
    bf16: bool = False  # bfloat16 autocast, CPU (about 1.5x faster on AVX512-BF16 CPUs) or CUDA; weights stay fp32
    seed: int = 42
    save_every: int = 200  # steps between checkpoints
    log_every: int = 20  # steps between log lines
    max_examples: Optional[int] = None  # use only the first N examples (smoke runs)
    eval_batch_size: int = 64
    threads: Optional[int] = None  # torch intra-op threads; default: torch's choice
    # -- added with GPUs, torchrun and teachers; an older checkpoint resumes when these are at their defaults --
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N; a resume may change it
    fp16: bool = False  # CUDA float16 autocast with a gradient scaler (GPUs without bfloat16)
    grad_accumulation: int = 1  # micro-batches per process per step; the global batch stays batch_size windows
    dataloader_workers: int = 0  # processes that collate batches ahead (GPU runs); results do not change
    teacher: Optional[str] = None  # extractive-QA model (HF folder or id, or ELMA folder) every exit learns from
    teacher_weight: float = 0.5  # w in (1-w)*loss + w*KL(teacher || exits), with a teacher
    # Skim stages applied in training ("skim:2,0.001", several joined by +; elma.train.skim): after a stage's layer,
    # context tokens its exit rules out are masked for the later layers, as the runtime's skimming drops them.
    skim: Optional[str] = None

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
        if self.grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1 (got {self.grad_accumulation})")
        if self.dataloader_workers < 0:
            raise ValueError(f"dataloader_workers must be >= 0 (got {self.dataloader_workers})")
        if not 0 <= self.teacher_weight <= 1:
            raise ValueError(f"teacher_weight must be in [0, 1] (got {self.teacher_weight})")
        if not DEVICE_PATTERN.match(self.device.strip().lower()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 exclude each other; pick one")
        parse_exit_weights(self.exit_weights)
        WindowConfig(self.max_seq_length, self.doc_stride, self.max_query_length)
        if self.skim is not None:
            from elma.train.skim import parse_skim

            parse_skim(self.skim)


@dataclass
class TrainResult:
    steps: int
    final_loss: float  # mean total loss over the last log interval
    wall_s: float
    tokens_per_s: float  # real (unpadded) tokens per second of this run's training steps, all processes
    first_step: int = 0  # the step this process started from (> 0 after --resume)
    losses: List[float] = field(default_factory=list)  # loss of every step this process ran
    eval: Optional[List[dict]] = None


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


def check_output_dir(config: TrainConfig, resume: bool, overwrite: bool, resume_weights: Optional[str] = None) -> None:
    """Refuse (exit 2) an ``output_dir`` that is taken, before anything is loaded or written.

    ``resume`` needs the checkpoint there; otherwise a non-empty folder is replaced only with ``overwrite``,
    and only when it holds an earlier run (a checkpoint or a model config). ``resume_weights`` (a snapshot) starts
    the folder afresh, so it must be free like a new run's, and a checkpoint there is resumed with ``resume``.
    """
    out = Path(config.output_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and overwrite:
        raise UsageError("--resume continues the run in -o and --overwrite starts a new one there: pass one of them")
    if resume_weights is not None:
        if resume:
            raise UsageError("--resume continues -o's checkpoint and --resume-weights a snapshot: pass one of them")
        if not Path(resume_weights).is_file():
            raise UsageError(f"{resume_weights}: no such snapshot (--resume-weights)")
        if ckpt_path.is_file():
            raise UsageError(f"{ckpt_path}: a full checkpoint is there; continue it with --resume (it keeps the "
                             f"optimizer state a snapshot lacks)")
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
    # the model may be a Hugging Face id: elma.train.backbone says what is wrong with it, before anything is written
    return load_squad(Path(config.eval_file)) if config.eval_file else None


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False,
          resume_weights: Optional[str] = None) -> TrainResult:
    """Run (or resume) one training job; writes the model folder and ``train_state.json`` into output_dir.

    ``resume_weights``: a weights-only snapshot (``elma snapshot``) of this run, for when its ``checkpoint.pt`` is
    lost; the run goes on from the snapshot's step with fresh AdamW moments (``checkpoint.restore_snapshot``).

    Under torchrun every process calls this; rank 0 alone writes. Nothing is created before the model, the
    teacher and the data have been read: a refused run leaves no output folder behind. With ``overwrite``, an
    earlier run's folder is replaced only when the new run has finished (it is built in a temporary folder beside
    it, which a kill does not make resumable).
    """
    env = DistEnv.from_env()
    device = resolve_device(config.device, env.local_rank)
    precision = precision_for(device, config.bf16, config.fp16)
    env.setup(device)
    try:
        return _train(config, resume, overwrite, env, device, precision, resume_weights)
    finally:
        env.teardown()


def _train(config: TrainConfig, resume: bool, overwrite: bool, env: DistEnv, device, precision,
           resume_weights: Optional[str] = None) -> TrainResult:
    out = Path(config.output_dir)
    _on_main(env, lambda: check_output_dir(config, resume, overwrite, resume_weights))
    snapshot = None
    if resume_weights is not None:  # read and checked before the data: a wrong snapshot costs no minutes
        snapshot = checkpoint.load_snapshot(Path(resume_weights))
        checkpoint.check_resumable(snapshot["config"], config, Path(resume_weights))
    _on_main(env, lambda: check_inputs(config))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model, tokenizer = build_model(config)
    try:
        parse_exit_weights(config.exit_weights, model.num_exits)
        skim_stages = ()
        if config.skim:
            from elma.train.skim import parse_skim

            skim_stages = parse_skim(config.skim, model.num_exits)
    except ValueError as err:
        raise UsageError(str(err)) from err
    teacher = None
    if config.teacher:
        from elma.train.teacher import load_teacher

        with torch.random.fork_rng(devices=[]):  # loading builds modules; the student's random stream is untouched
            teacher = load_teacher(config.teacher, tokenizer, config.max_seq_length).to(device)
    examples = load_many([Path(f) for f in config.train_files])
    if config.max_examples:
        examples = examples[: config.max_examples]
    wcfg = WindowConfig(config.max_seq_length, config.doc_stride, config.max_query_length)
    t0 = time.monotonic()
    windows = build_windows(examples, tokenizer, wcfg)
    n_null = sum(w.start_position == 0 for w in windows)
    log = logger.info if env.is_main else _quiet
    log("%d examples -> %d windows (%d labelled no-answer) in %.1f s", len(examples), len(windows), n_null,
        time.monotonic() - t0)
    log("device %s, %s, %d process(es) x %d micro-batch(es) per step of %d windows", device, precision.name,
        env.world_size, config.grad_accumulation, config.batch_size)
    # --overwrite: the earlier run stays in place until this one has finished
    staging = env.is_main and overwrite and not resume and out.is_dir() and any(out.iterdir())
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(out.parent))) if staging else out
    existed = out.exists()
    ckpt_path = work / CHECKPOINT_NAME
    if env.is_main:
        work.mkdir(parents=True, exist_ok=True)
    try:
        pad_id = pad_token_id(tokenizer)
        lengths = [len(w) for w in windows]
        steps_per_epoch = math.ceil(len(windows) / config.batch_size)
        total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        warmup = int(config.warmup_ratio * total)

        train_exits = _freeze(model, config)
        if env.rank > 0:  # same initial weights on every rank (same seed), own dropout draws from here on
            torch.manual_seed(config.seed + 7919 * env.rank)
        model.to(device)
        optimizer = _optimizer(model, config)
        scheduler = _linear_schedule(optimizer, warmup, total)

        step = 0
        if resume:
            state = env.broadcast(checkpoint.load(ckpt_path) if env.is_main else None)
            checkpoint.check_resumable(state["config"], config, ckpt_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            rng = checkpoint.rank_rng(state, env.rank, env.world_size)
            if rng is not None:
                set_rng_state(rng, device)
            precision.load_state_dict(state.get("scaler"))
            step = state["step"]
            del state
            log("resumed from step %d of %d", step, total)
        elif snapshot is not None:
            step = checkpoint.restore_snapshot(snapshot, model, scheduler, Path(resume_weights))
            snapshot = None
            log("resumed from step %d of %d (weights-only snapshot)", step, total)

        module = wrap(model, env, device, skim_stages)
        model.train()
        if config.two_stage:
            model.encoder.eval()  # frozen: no dropout either
        params = list(model.parameters())
        loss_fn = _loss_fn(config, train_exits, teacher, precision)
        inputs = MODEL_INPUTS + (SKIM_INPUTS if skim_stages else ())
        losses: List[float] = []
        real_tokens = 0
        t_start = time.monotonic()
        bar = _progress(total, step, env.is_main)
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            batches = epoch_batches(lengths, config.batch_size, config.seed, epoch, config.group_by_length)[offset:]
            data = StepBatches(windows, batches[: total - step], pad_id, env, config.grad_accumulation)
            for micro in iterate(data, config.dataloader_workers, device.type == "cuda", config.seed + epoch):
                loss, parts = train_step(module, micro, loss_fn, optimizer, scheduler, precision, params,
                                         config.max_grad_norm, device, inputs)
                if env.distributed:
                    loss = env.sum(loss) / env.world_size  # the global batch's mean loss
                step += 1
                losses.append(loss.item())
                real_tokens += sum(int(b["attention_mask"].sum()) for b, w in micro if w > 0)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if step % config.log_every == 0 or step == total:
                    elapsed = time.monotonic() - t_start
                    eta_s = elapsed / len(losses) * (total - step)
                    log("step %d/%d loss %.4f span %.4f distill %.4f answerability %.4f%s per-exit %s lr %.2e "
                        "%.0f tok/s ETA %.0f min", step, total, _mean(losses[-config.log_every:]), parts.span.item(),
                        parts.distill.item(), parts.answerability.item(),
                        "" if parts.teacher is None else f" teacher {parts.teacher.item():.4f}",
                        " ".join(f"{x:.2f}" for x in parts.per_exit.tolist()), scheduler.get_last_lr()[0],
                        real_tokens * env.world_size / max(elapsed, 1e-9), eta_s / 60)
                if step % config.save_every == 0 or step == total:
                    ranks = env.gather(rng_state(device))
                    if env.is_main:
                        checkpoint.save(ckpt_path, model, optimizer, scheduler, step, config, ranks,
                                        precision.state_dict())
        if bar is not None:
            bar.close()
        wall_s = time.monotonic() - t_start
        if env.distributed:
            real_tokens = int(env.sum(torch.tensor(real_tokens, device=device)).item())
        result = TrainResult(step, _mean(losses[-config.log_every:]) if losses else float("nan"), wall_s,
                             real_tokens / max(wall_s, 1e-9), step - len(losses), losses)
        if not env.is_main:
            return result
        model.eval()
        # thresholds calibrated for the weights we started from no longer hold; --eval-file recalibrates
        model.exit_config = replace(model.exit_config, null_thresholds=(), default_policy=None, calibration=None)
        model.save_pretrained(work)
        save_tokenizer(tokenizer, work)
        if config.eval_file:
            result.eval = evaluate_and_calibrate(model, tokenizer, config, work)
        write_json(work / "train_state.json", {"config": asdict(config), "steps": step, "final_loss": result.final_loss,
                                              "wall_s_this_process": wall_s, "tokens_per_s": result.tokens_per_s,
                                              "first_step": result.first_step, "losses": losses, "eval": result.eval,
                                              "world_size": env.world_size, "device": str(device),
                                              "precision": precision.name})
        if staging:
            publish_dir(work, out, overwrite=True)
        return result
    except BaseException:
        if env.is_main:
            if staging:
                shutil.rmtree(work, ignore_errors=True)
            elif not existed and work.is_dir() and not any(work.iterdir()):
                work.rmdir()  # failed before its first checkpoint: no empty folder left behind
        raise


def _on_main(env: DistEnv, check) -> None:
    """Run ``check`` on rank 0 (the one that reads and writes the output) and raise its error on every rank."""
    error = None
    if env.is_main:
        try:
            check()
        except ElmaError as err:
            error = err
    error = env.broadcast(error)
    if error is not None:
        raise error


def _freeze(model: MultiExitQA, config: TrainConfig) -> slice:
    """Freeze what the config keeps fixed; returns the exits whose loss is trained."""
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
    return train_exits


def _loss_fn(config: TrainConfig, train_exits: slice, teacher, precision):
    """(ExitLogits, batch) -> LossParts: the multi-exit loss, and the teacher's term when there is one."""

    def loss(logits, batch):
        parts = multi_exit_loss(logits.start.float(), logits.end.float(), batch["start_positions"],
                                batch["end_positions"], config.distill_rate, config.temperature, train_exits,
                                config.exit_weights, logits.null, config.answerability_weight)
        if teacher is None:
            return parts
        with precision.autocast():  # the teacher reads the batch in the student's precision
            t_start, t_end = teacher.logits(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        live = getattr(logits, "live", None)
        if live is not None:  # skimming: each exit learns the teacher over the tokens it ran
            t_start, t_end = mask_teacher(t_start, live), mask_teacher(t_end, live)
        return with_teacher(parts, logits.start.float(), logits.end.float(), t_start, t_end, config.temperature,
                            config.teacher_weight, train_exits, config.exit_weights)

    return loss


def _quiet(*args, **kwargs) -> None:
    """Ranks other than 0 do not log progress."""

def evaluate_and_calibrate(model: MultiExitQA, tokenizer, config: TrainConfig, out: Path) -> List[dict]:
    """Calibrate each exit's null threshold on the held-out file, store it, and score every exit."""
    from elma.data.squad import load_squad
    from elma.predict import calibrate_null_thresholds, predict_all_exits, score_exits, with_null_thresholds

    examples = load_squad(Path(config.eval_file))
    results = predict_all_exits(model, tokenizer, examples, batch_size=config.eval_batch_size)
    thresholds = calibrate_null_thresholds(results, examples)
    results = with_null_thresholds(results, thresholds)
    model.exit_config = replace(model.exit_config, null_thresholds=tuple(thresholds))
    model.save_pretrained(out)
    rows = score_exits(results, examples)
    write_json(out / "eval_results.json", {"eval_file": config.eval_file, "exits": rows})
    for r in rows:
        logger.info("exit %d: EM %.2f F1 %.2f HasAns F1 %s NoAns F1 %s (null threshold %.3f)", r["exit_layer"],
                    r["exact"], r["f1"], r.get("HasAns_f1"), r.get("NoAns_f1"), r["null_threshold"])
    return rows


def _mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _progress(total: int, initial: int, main: bool = True):
    if not main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=None)  # None: off when stderr is not a terminal
