"""fp16 and int8 versions of exported graphs.

fp16 uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``,
shipped in the onnxruntime wheel, so no extra dependency). Weights and most
ops become float16; the ops in ``FP16_KEEP_FP32_OPS`` stay float32 with casts
around them: LayerNormalization and its decomposition (mean, variance, square
root), Softmax (its max/sum reductions), and Pow (ALBERT's gelu_new cubes its
input, which overflows float16 above ~40). Graph inputs and outputs stay
float32 (``keep_io_types``), so every precision has the same interface. The
attention and exit masks use -1e4 (``MASK_FILL``), exact in float16.

int8 is ONNX Runtime's dynamic quantisation of MatMul weights (activations
quantised on the fly), for CPU execution. Only the encoder graphs (layer groups
and the fused graph) are quantised: the embeddings are a lookup, and an exit
head is one (hidden x 2) MatMul whose error would land directly on the logits.
By default the feed-forward output projection stays float32 as well
(``INT8_KEEP_FP32``; ``elma export --int8-keep-fp32 REGEX`` chooses others).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt")
INT8_KINDS = ("group", "fused")  # graph kinds that int8 quantises; the others stay fp32
# The feed-forward output projection reads the GELU output, whose range is wide and skewed: one dynamic
# activation scale per tensor loses most of its small values there. Keeping it float32 raised the answer
# agreement with fp32 from 89% to 93% on 500 dev questions (v0 reference model; benchmarks/precision_agreement.py).
INT8_KEEP_FP32 = (r"(?<!attention)/output/dense/MatMul",)


def to_fp16(src: Path, dst: Path) -> None:
    """Write the float16 version of graph ``src`` (inline weights) to ``dst``."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # At random init many weights are equal (LayerNorm ones, zero biases) and the exporter shares them between
    # fp32 and fp16 nodes; the converter then keeps them fp32 and says so at INFO level, once per tensor.
    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": tiny weights, expected
        converted = convert_float_to_float16(model, keep_io_types=True,
                                             op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32_OPS)))
    onnx.save(converted, str(dst))


def to_int8(src: Path, dst: Path, keep_fp32: Sequence[str] = INT8_KEEP_FP32) -> None:
    """Write the dynamically quantised (int8 MatMul weights) version of graph ``src`` to ``dst``.

    ``keep_fp32``: regular expressions; MatMul nodes whose name matches one stay float32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                if n.op_type == "MatMul" and any(re.search(k, n.name) for k in keep_fp32)]

    # The quantiser logs every tensor it skips on the root logger; keep that out of ELMA's output.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # per-channel scales: one per output column, about half the logit error of one scale per tensor
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, nodes_to_exclude=excluded)
    finally:
        root.setLevel(level)
