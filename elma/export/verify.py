"""Run an exported graph in ONNX Runtime and compare it with its PyTorch step."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple

import numpy as np

from elma.errors import ExportError
from elma.export.specs import LayerExportSpec, Tolerance


def cpu_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session; external data is read from the graph's folder."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads burn CPU between the many short runs of a per-layer chain (measured, runtime issue).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_graph(path: Path, spec: LayerExportSpec, checks: Sequence[Tuple[Mapping[str, np.ndarray], Sequence[np.ndarray]]],
                tolerance: Tolerance, precision: str = "fp32") -> float:
    """Run ``path`` on each check's feeds; every output must match the expected arrays within ``tolerance``.

    Args:
        checks: (feeds by input name, expected outputs in ``spec.outputs`` order) pairs, e.g. one per input shape.

    Returns:
        The largest absolute difference over all checks and outputs.

    Raises:
        ExportError: naming the file, the output, the input shape and the difference.
    """
    try:
        session = cpu_session(path)
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ExportError(f"{path.name}: ONNX Runtime cannot load the exported graph: {err}") from err
    worst = 0.0
    for feeds, expected in checks:
        got = session.run(list(spec.output_names), dict(feeds))
        shape = next(iter(feeds.values())).shape[:2]
        for name, out, ref in zip(spec.output_names, got, expected):
            out = np.asarray(out, dtype=np.float32)
            if out.shape != ref.shape:
                raise ExportError(f"{path.name}: output {name} has shape {out.shape}, the PyTorch step gives {ref.shape}")
            diff = float(np.max(np.abs(out - ref))) if out.size else 0.0
            limit = tolerance.limit(float(np.max(np.abs(ref))) if ref.size else 0.0)
            if not np.isfinite(out).all() or diff > limit:
                raise ExportError(f"{path.name}: output {name} differs from the PyTorch step by {diff:.3g} (limit "
                                  f"{limit:.3g}, {precision}, inputs of shape {shape}); the export is wrong, "
                                  f"report it with the model's config.json")
            worst = max(worst, diff)
    return worst
