"""Explicit optimisation profiles for ONNX Runtime's TensorRT execution provider.

Without them the provider builds a TensorRT engine for the shapes it first sees and builds another
whenever an input falls outside them, so a runtime whose windows change length rebuilds engines
mid-run (minutes on a Jetson). With ``trt_profile_min_shapes`` / ``trt_profile_opt_shapes`` /
``trt_profile_max_shapes`` covering every batch and sequence length the bundle accepts, one engine
serves all of them, and the provider's engine cache keeps it across starts.

Format (onnxruntime TensorRT-ExecutionProvider documentation): ``"name:d0xd1[xd2],name2:..."``, every
dynamic input of the graph listed in each of the three options. The options exist from onnxruntime
1.15; older versions refuse unknown provider options, so ``profile_options`` returns none there.
"""

import re
from typing import Any, Dict, Mapping, Sequence, Tuple

PROFILE_MIN_ORT = (1, 15)  # first onnxruntime with trt_profile_*_shapes


def ort_version(version: str) -> Tuple[int, int]:
    """"1.16.3" -> (1, 16); "1.11.0+jetson" -> (1, 11)."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise ValueError(f"not an onnxruntime version (got {version!r})")
    return int(match.group(1)), int(match.group(2))


def _dims(shape: Sequence[Any], bounds: Mapping[str, int]) -> str:
    dims = []
    for dim in shape:
        if isinstance(dim, str):
            if dim not in bounds:
                raise ValueError(f"symbolic dimension {dim!r} is neither 'batch' nor 'seq'")
            dims.append(bounds[dim])
        else:
            dims.append(int(dim))
    return "x".join(str(d) for d in dims)


def profile_options(inputs: Sequence[Mapping[str, Any]], max_batch: int, max_seq: int, ort_version_str: str,
                    opt_batch: int = 1) -> Dict[str, str]:
    """The three ``trt_profile_*_shapes`` provider options for one graph.

    Args:
        inputs: the manifest's ``io[kind]["inputs"]`` (``name`` and ``shape`` with "batch"/"seq" or sizes).
        max_batch, max_seq: the largest batch and window the runtime sends.
        ort_version_str: ``onnxruntime.__version__``; before 1.15 no options are returned.
        opt_batch: the batch TensorRT tunes for (the device answers one question at a time); opt seq is ``max_seq``.

    Returns:
        ``{"trt_profile_min_shapes": ..., "trt_profile_opt_shapes": ..., "trt_profile_max_shapes": ...}`` or ``{}``.
    """
    if max_batch < 1 or max_seq < 1 or not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch and max_seq >= 1 (got {opt_batch}, {max_batch}, {max_seq})")
    if ort_version(ort_version_str) < PROFILE_MIN_ORT:
        return {}
    levels = {"min": {"batch": 1, "seq": 1}, "opt": {"batch": opt_batch, "seq": max_seq},
              "max": {"batch": max_batch, "seq": max_seq}}
    dynamic = [t for t in inputs if any(isinstance(d, str) for d in t["shape"])]
    return {f"trt_profile_{level}_shapes": ",".join(f"{t['name']}:{_dims(t['shape'], bounds)}" for t in dynamic)
            for level, bounds in levels.items()}
