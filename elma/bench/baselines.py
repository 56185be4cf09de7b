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


def fused_pass(rt, bundle, examples: Sequence[Example]):
    """The fused graph over ``examples``. Returns (per question, wall seconds)."""
    from elma.runtime.backends import OrtOptions, import_onnxruntime, session_options

    ort = import_onnxruntime()
    options = getattr(rt.backend, "options", OrtOptions())
    providers = list(getattr(rt.backend, "providers", None) or ["CPUExecutionProvider"])  # as the runtime's sessions
    session = ort.InferenceSession(str(bundle.fused), session_options(ort, options), providers=providers)
    dtypes = {i.name: (np.int32 if "int32" in i.type else np.int64) for i in session.get_inputs()}
    out: List = []
    t_pass = time.perf_counter()
    for ex in examples:
        t0 = time.perf_counter()
        windows = rt.windows([(ex.question, ex.context)])
        ids, mask, types = _batch(windows, rt.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        start, end = session.run(None, {k: v.astype(dtypes[k]) for k, v in feeds.items() if k in dtypes})
        out.append(_result(rt, ex, windows, start, end, t0))
    return out, time.perf_counter() - t_pass


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
