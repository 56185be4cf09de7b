"""One step module -> one ONNX file, with ``torch.onnx.export``.

Two exporters exist in torch 2.13:

* ``torchscript`` (``dynamo=False``, the default here): deprecated by PyTorch but present, it traces the
  step, takes ``dynamic_axes`` and writes any opset from 13 (what TensorRT 8.0-8.4 parse) to 20. On the
  tiny test models it exports the four kinds of graph about 15x faster than the dynamo exporter.
* ``dynamo`` (``torch.export``): the future; it writes opset 18 and converts down, so ``--opset 13`` may
  fail with it. Use it where the TorchScript exporter is gone.

Both give graphs that match the PyTorch steps to float rounding (checked at export).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from elma.errors import ExportError
from elma.export.specs import BATCH_AXIS, SEQ_AXIS, LayerExportSpec

logger = logging.getLogger(__name__)


def export_step(step, example: Sequence, spec: LayerExportSpec, path: Path, opset: int, exporter: str = "torchscript",
                max_seq_length: int = 512) -> None:
    """Write ``step`` (an ``nn.Module`` of ``elma.model.steps``) to ``path``.

    Args:
        step: the module; traced in eval mode.
        example: its example inputs, in ``spec.inputs`` order, each at least 2 long on the batch and seq axes
            (size-1 axes would be specialised).
        spec: names and symbolic axes of the graph.
        opset: ONNX opset (17 = native LayerNormalization).
        exporter: "torchscript" or "dynamo".
        max_seq_length: upper bound of the seq axis (dynamo only).

    Raises:
        ExportError: the exporter failed; the message carries its last line.
    """
    import torch

    assert len(example) == len(spec.inputs), f"{spec.kind}: {len(example)} example inputs for {len(spec.inputs)} names"
    step.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose; its deprecation and tracer warnings are noise here.
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(step, tuple(example), str(path), input_names=list(spec.input_names),
                                  output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes(),
                                  opset_version=opset, do_constant_folding=True, dynamo=False)
            elif exporter == "dynamo":
                from torch.export import Dim

                batch = Dim(BATCH_AXIS, min=1)
                seq = Dim(SEQ_AXIS, min=1, max=max_seq_length)
                torch.onnx.export(step, tuple(example), str(path), input_names=list(spec.input_names),
                                  output_names=list(spec.output_names),
                                  dynamic_shapes=tuple({0: batch, 1: seq} for _ in spec.inputs),
                                  opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False)
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
    except (RuntimeError, ValueError, TypeError) as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path.name}: torch.onnx.export ({exporter}, opset {opset}) failed: {last}") from err
    logger.debug("exported %s (%s, opset %d, %d bytes)", path.name, exporter, opset, path.stat().st_size)
