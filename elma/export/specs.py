"""What each exported graph looks like, as data (the pattern of optimum's export configs).

One ``LayerExportSpec`` per kind of graph: its input and output names, dtypes
and symbolic axes, and how close ONNX Runtime must come to the PyTorch step
before the bundle is written. ``ExportConfig`` holds the user's choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from elma.runtime.bundle import PRECISIONS

BATCH_AXIS = "batch"
SEQ_AXIS = "seq"
MIN_OPSET = 13  # TensorRT 8.0-8.4 parse up to opset 13 (LayerNormalization is then decomposed)
DEFAULT_OPSET = 17  # the first opset with a native LayerNormalization
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class Tolerance:
    """Export-time check: max |onnx - torch| <= atol + rtol * max |torch|, per output."""

    atol: float
    rtol: float

    def limit(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# fp32 must match to float rounding. fp16 and int8 are checked for gross breakage only; their accuracy is
# judged on answers (same answer text as fp32 on dev questions), not here. int8 dynamic quantisation moves
# the reference model's logits (peak ~5.5) by up to ~2.6 with per-tensor and ~1-1.5 with per-channel scales
# (measured on elma-minilm-l6-squad2) while its answers agree, so int8 gets a limit relative to the
# logit scale: a wrong graph (wrong weights, dropped mask) is off by about the scale itself.
DEFAULT_TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5),
    "fp16": Tolerance(atol=1e-2, rtol=2e-2),
    "int8": Tolerance(atol=0.25, rtol=0.4),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int32" for ids and masks (TensorRT 8.x takes no int64 inputs), "float32"
    hidden: bool = False  # trailing hidden-size axis after (batch, seq)

    def shape(self, hidden_size: int) -> Tuple[object, ...]:
        return (BATCH_AXIS, SEQ_AXIS, hidden_size) if self.hidden else (BATCH_AXIS, SEQ_AXIS)


@dataclass(frozen=True)
class LayerExportSpec:
    """One kind of graph of a bundle. Every tensor has the symbolic axes (batch, seq[, hidden])."""

    kind: str  # "embeddings", "group", "exit" or "fused"
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    tolerances: Dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        """``torch.onnx.export(dynamic_axes=...)`` for the TorchScript exporter."""
        return {t.name: {0: BATCH_AXIS, 1: SEQ_AXIS} for t in self.inputs + self.outputs}

    def io_table(self, hidden_size: int) -> Dict[str, object]:
        """The manifest's description of this graph's inputs and outputs."""
        def describe(t: TensorSpec) -> Dict[str, object]:
            return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape(hidden_size))}
        return {"inputs": [describe(t) for t in self.inputs], "outputs": [describe(t) for t in self.outputs]}


_IDS = TensorSpec("input_ids", "int32")
_TYPES = TensorSpec("token_type_ids", "int32")
_MASK = TensorSpec("attention_mask", "int32")
_HIDDEN = TensorSpec("hidden_states", "float32", hidden=True)
_LOGITS = (TensorSpec("start_logits", "float32"), TensorSpec("end_logits", "float32"))

EMBEDDINGS_SPEC = LayerExportSpec("embeddings", (_IDS, _TYPES), (_HIDDEN,))
GROUP_SPEC = LayerExportSpec("group", (_HIDDEN, _MASK), (TensorSpec("layer_output", "float32", hidden=True),))
EXIT_SPEC = LayerExportSpec("exit", (_HIDDEN, _MASK), _LOGITS)
# Same input order as MultiExitQA.forward; returns the last exit only (see elma.model.steps.FusedStep).
FUSED_SPEC = LayerExportSpec("fused", (_IDS, _MASK, _TYPES), _LOGITS)
SPECS = {s.kind: s for s in (EMBEDDINGS_SPEC, GROUP_SPEC, EXIT_SPEC, FUSED_SPEC)}


@dataclass(frozen=True)
class ExportConfig:
    """``elma export`` options; CLI flags map 1:1 onto these fields."""

    precision: str = "fp32"  # weights: fp32, fp16 (normalisation and softmax kept fp32) or int8 (dynamic, MatMul)
    max_seq_length: Optional[int] = None  # longest window; default: the model's, capped by max_position_embeddings
    opset: int = DEFAULT_OPSET  # 17 = native LayerNormalization; 13 for TensorRT 8.0-8.5 (JetPack 4/5)
    exporter: str = "torchscript"  # torch.onnx exporter: "torchscript" (dynamo=False) or "dynamo"
    seed: int = 0  # of the random token ids the exported graphs are checked on
    overwrite: bool = False  # replace an existing bundle folder
    threads: Optional[int] = None  # torch intra-op threads while exporting (None: torch's default); restored after
    int8_keep_fp32: Optional[Tuple[str, ...]] = None  # int8: regexes of MatMul node names left fp32; None: the default

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)} (got {self.exporter!r})")
        if not MIN_OPSET <= self.opset <= 20:
            raise ValueError(f"opset must be in {MIN_OPSET}..20 (got {self.opset})")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (got {self.threads})")
        for pattern in self.int8_keep_fp32 or ():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"int8_keep_fp32: {pattern!r} is not a regular expression ({err})") from None
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be at least 8 (got {self.max_seq_length})")
