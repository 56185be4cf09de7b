"""Measured full-depth baselines: what a user would run instead of the early-exit runtime.

Both use the runtime's windows (``Runtime.windows``) and span decoding (``decode_answer`` with the last exit's
null threshold), at batch 1 (one question, all its windows), timed from tokenisation to decoded answer, so
that the only difference from the runtime's rows is how the model is run:

* ``fused_pass``: the bundle's ``fused.onnx`` (embeddings, every layer, the last exit head) in one
  ONNX Runtime session with the runtime's session options;
* ``torch_eager_pass``: the ELMA model folder's ``MultiExitQA`` in PyTorch eager (transformers encoder),
  its last exit's logits.
"""

from __future__ import annotations

import logging
import time
from typing import List, Sequence, Tuple

import numpy as np

from elma.data.squad import Example
from elma.runtime.spans import decode_answer

logger = logging.getLogger(__name__)


def _batch(windows, pad_id: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros((len(windows), width), dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for i, w in enumerate(windows):
        n = len(w)
        ids[i, :n], types[i, :n], mask[i, :n] = w.input_ids, w.token_type_ids, 1
    return ids, mask, types


def _result(rt, ex: Example, windows, start, end, t0: float):
    from elma.bench.runner import QuestionResult, na_prob

    L = rt.num_layers
    threshold = rt.info.null_threshold(L)
    span = decode_answer(ex.context, [s[:len(w)] for s, w in zip(start, windows)], [e[:len(w)] for e, w in zip(end, windows)],
                         [w.offsets for w in windows], threshold)
    ms = (time.perf_counter() - t0) * 1e3
    return QuestionResult(ex.qid, span.prediction, na_prob(span.span_score - span.null_score, threshold), L, (L,) * len(windows), ms)


def fused_answerer(rt, bundle):
    """A function answering one ``Example`` through the fused graph (``QuestionResult``), and its providers."""
    from elma.runtime.backends import OrtOptions, import_onnxruntime, session_options

    ort = import_onnxruntime()
    options = getattr(rt.backend, "options", OrtOptions())
    providers = list(getattr(rt.backend, "providers", None) or ["CPUExecutionProvider"])  # as the runtime's sessions
    session = ort.InferenceSession(str(bundle.fused), session_options(ort, options), providers=providers)
    dtypes = {i.name: (np.int32 if "int32" in i.type else np.int64) for i in session.get_inputs()}

    def answer(ex: Example):
        t0 = time.perf_counter()
        windows = rt.windows([(ex.question, ex.context)])
        ids, mask, types = _batch(windows, rt.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        start, end = session.run(None, {k: v.astype(dtypes[k]) for k, v in feeds.items() if k in dtypes})
        return _result(rt, ex, windows, start, end, t0)

    return answer, session.get_providers()


def fused_pass(rt, bundle, examples: Sequence[Example]):
    """The fused graph over ``examples``. Returns (per question, wall seconds, providers the session uses)."""
    answer, providers = fused_answerer(rt, bundle)
    t_pass = time.perf_counter()
    out = [answer(ex) for ex in examples]
    return out, time.perf_counter() - t_pass, providers


def torch_eager_pass(model_dir, rt, examples: Sequence[Example]):
    """``MultiExitQA`` in PyTorch eager over ``examples``, last exit. Returns (per question, wall seconds)."""
    import torch

    from elma.model.multi_exit import MultiExitQA

    model = MultiExitQA.from_pretrained(model_dir).eval()
    if model.num_exits != rt.num_layers:
        raise ValueError(f"{model_dir}: {model.num_exits} exits, the benchmarked model has {rt.num_layers} layers")
    out: List = []
    t_pass = time.perf_counter()
    with torch.inference_mode():
        for ex in examples:
            t0 = time.perf_counter()
            windows = rt.windows([(ex.question, ex.context)])
            ids, mask, types = (torch.from_numpy(a) for a in _batch(windows, rt.pad_id))
            start, end = model(ids, mask, types)  # (L, B, T)
            out.append(_result(rt, ex, windows, start[-1].float().numpy(), end[-1].float().numpy(), t0))
    return out, time.perf_counter() - t_pass


def hf_qa_pass(checkpoint, rt, examples: Sequence[Example]):
    """A Hugging Face ``AutoModelForQuestionAnswering`` checkpoint in PyTorch eager, with the usual span decoding.

    The ``question-answering`` pipeline is gone from transformers 5, so this does what it did: the tokenizer
    cuts the context into overflowing windows (``truncation="only_second"``, the benchmarked model's window
    length and stride), the model gives start/end logits per window, and the best span over the windows wins
    against the smallest CLS score (threshold 0, the pipeline's ``handle_impossible_answer``). Decoding is the
    runtime's ``decode_answer``, so only the model differs.

    Returns:
        (per question, wall seconds, FLOPs per question at this checkpoint's own depth and window lengths).
    """
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    from elma.bench.roofline import question_flops
    from elma.bench.runner import QuestionResult, na_prob

    config = AutoConfig.from_pretrained(checkpoint)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    L = int(config.num_hidden_layers)
    hidden, ffn = int(config.hidden_size), int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    geometry = rt.info.windows
    out: List = []
    flops: List[float] = []
    t_pass = time.perf_counter()
    with torch.inference_mode():
        for ex in examples:
            t0 = time.perf_counter()
            enc = tokenizer(ex.question, ex.context, truncation="only_second", max_length=geometry.max_seq_length,
                            stride=geometry.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                            padding="longest", return_tensors="pt")
            offsets = []
            for w in range(enc["input_ids"].shape[0]):
                seq_ids = enc.sequence_ids(w)
                n = int(enc["attention_mask"][w].sum())
                offsets.append([tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w].tolist()[:n], seq_ids[:n])])
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            logits = model(**inputs)
            start, end = logits.start_logits.float().numpy(), logits.end_logits.float().numpy()  # (W, T)
            span = decode_answer(ex.context, [s[:len(o)] for s, o in zip(start, offsets)],
                                 [e[:len(o)] for e, o in zip(end, offsets)], offsets, 0.0)
            ms = (time.perf_counter() - t0) * 1e3
            out.append(QuestionResult(ex.qid, span.prediction, na_prob(span.span_score - span.null_score, 0.0), L,
                                      (L,) * len(offsets), ms))
            flops.append(question_flops([len(o) for o in offsets], (L,) * len(offsets), hidden, ffn))
    return out, time.perf_counter() - t_pass, flops
