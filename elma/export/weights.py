"""Store every weight tensor of a bundle once, in ``weights.bin``, as ONNX external data.

The fused graph holds the same tensors as the per-layer graphs, and so would
double the bundle; an ALBERT bundle's one layer file is shared anyway. Moving
each initializer's bytes into one file, deduplicated by content (sha256 of the
raw bytes; each graph keeps its own name, dtype and shape for them), makes the
bundle about the size of the weights. ONNX Runtime reads external data relative
to the graph's folder, and TensorRT's ONNX parser reads it when given the
graph's path (``OnnxParser.parse(buf, path)`` / ``parse_from_file``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator, Sequence, Tuple

MIN_EXTERNAL_BYTES = 1024  # smaller tensors (shapes, scalars, small biases) stay inside the graph
ALIGN_BYTES = 64


def externalize_weights(graph_paths: Sequence[Path], weights_path: Path, min_bytes: int = MIN_EXTERNAL_BYTES) -> int:
    """Move the initializers of every graph (inline now) into ``weights_path``; rewrite the graphs in place.

    Returns:
        The size of ``weights_path`` in bytes.
    """
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    stored: Dict[str, Tuple[int, int]] = {}  # sha256 of bytes -> (offset, length)
    offset = 0
    with open(weights_path, "wb") as out:
        for path in graph_paths:
            model = onnx.load(str(path), load_external_data=False)
            for tensor in _initializers(model.graph):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    continue
                if not tensor.HasField("raw_data"):  # typed fields (e.g. float16 in int32_data) -> raw bytes
                    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
                raw = tensor.raw_data
                if len(raw) < min_bytes:
                    continue
                key = hashlib.sha256(raw).hexdigest()
                if key not in stored:
                    pad = -offset % ALIGN_BYTES
                    out.write(b"\0" * pad)
                    offset += pad
                    out.write(raw)
                    stored[key] = (offset, len(raw))
                    offset += len(raw)
                where, length = stored[key]
                set_external_data(tensor, location=weights_path.name, offset=where, length=length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
            Path(path).write_bytes(model.SerializeToString())
    return offset


def _initializers(graph) -> Iterator:
    yield from graph.initializer
    for node in graph.node:  # subgraphs (If/Loop bodies); the step graphs have none, kept for safety
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                yield from _initializers(attr.g)
            for sub in attr.graphs:
                yield from _initializers(sub)


def weight_bytes(graph_path: Path) -> int:
    """Bytes of weights one graph uses: its external ranges plus its inline initializers."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    total = 0
    for tensor in _initializers(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in tensor.external_data}.get("length", 0))
        else:
            total += len(tensor.raw_data)
    return total
