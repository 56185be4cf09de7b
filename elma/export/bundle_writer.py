"""``elma export``: a trained multi-exit model folder -> a verified bundle folder.

Order of work, so that a bundle is never half-written:

1. export every step to ONNX in a temporary folder beside the target;
2. convert to the requested precision; move all weights into ``weights.bin``;
3. run every final graph in ONNX Runtime against its PyTorch step (``ExportConfig`` tolerances);
4. copy the tokenizer, hash every file, write ``manifest.json`` last;
5. rename the temporary folder into place (an old bundle is replaced only with ``overwrite``).

Any failure removes the temporary folder and leaves the target as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import elma
from elma.data.features import WindowConfig
from elma.errors import ExportError, ExportTargetExists, ModelLoadError, OutputExistsError
from elma.export.onnx_export import export_step
from elma.export.precision import INT8_KEEP_FP32, INT8_KINDS, to_fp16, to_int8
from elma.export.specs import EMBEDDINGS_SPEC, EXIT_SPEC, FUSED_SPEC, GROUP_SPEC, SPECS, ExportConfig, LayerExportSpec
from elma.export.verify import check_graph
from elma.export.weights import externalize_weights
from elma.fsutil import Output, check_outputs, publish_dir
from elma.runtime.bundle import (
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    FUSED_FILE,
    MANIFEST_NAME,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Backbone,
    exit_file,
    files_table,
    group_file,
    write_manifest,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_bundle`` wrote."""

    bundle: Path
    precision: str
    file_sizes_bytes: Dict[str, int]  # every file of the bundle, manifest included
    max_abs_diff: Dict[str, float]  # per graph: largest |ONNX Runtime - PyTorch| over the check inputs
    wall_s: float

    @property
    def total_size_bytes(self) -> int:
        return sum(self.file_sizes_bytes.values())


@dataclass
class _Graph:
    name: str  # file name in the bundle
    spec: LayerExportSpec
    step: object  # nn.Module
    trace_args: Tuple  # torch tensors
    checks: List[Tuple[Dict[str, np.ndarray], List[np.ndarray]]]  # (feeds, expected outputs) per check shape


def export_bundle(model_dir: "str | os.PathLike", out_dir: "str | os.PathLike", config: ExportConfig = ExportConfig()
                  ) -> ExportReport:
    """Export the ELMA model folder ``model_dir`` as a bundle at ``out_dir``.

    Raises:
        ModelLoadError: the model folder is incomplete.
        ExportError: missing export dependencies, an unusable ``max_seq_length``, an existing ``out_dir``
            without ``overwrite``, or an exported graph that does not reproduce its PyTorch step.
    """
    _require_export_dependencies()
    import torch

    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _export(Path(model_dir), Path(out_dir), config)
    finally:
        torch.set_num_threads(threads)


def _export(model_dir: Path, target: Path, config: ExportConfig) -> ExportReport:
    began = time.perf_counter()
    import torch

    from elma.model.multi_exit import MultiExitQA, read_model_config
    from elma.model.steps import model_steps, use_eager_attention

    _check_target(target, config.overwrite, model_dir)
    model_config = read_model_config(model_dir)
    model = MultiExitQA.from_pretrained(model_dir)
    # Eager attention: plain MatMul/Softmax graphs that TensorRT fuses and the fp16 converter can pin to fp32.
    use_eager_attention(model)
    steps = model_steps(model)
    max_seq = _resolve_max_seq_length(model, config)
    windows = _window_config(model, max_seq)
    tokenizer_src = _tokenizer_source(model_dir)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=str(target.parent)))
    try:
        stage = tmp / ".fp32"
        stage.mkdir()
        with torch.no_grad():
            graphs = _plan_graphs(steps, model.config, max_seq, config.seed)
        diffs: Dict[str, float] = {}
        for graph in graphs:
            staged = stage / graph.name
            export_step(graph.step, graph.trace_args, graph.spec, staged, config.opset, config.exporter, max_seq)
            _convert(staged, tmp / graph.name, graph.spec.kind, config)
        shutil.rmtree(stage)
        externalize_weights([tmp / g.name for g in graphs], tmp / WEIGHTS_FILE)
        for graph in graphs:
            diffs[graph.name] = check_graph(tmp / graph.name, graph.spec, graph.checks,
                                            graph.spec.tolerances[config.precision], config.precision)
        _write_tokenizer(tokenizer_src, tmp / TOKENIZER_FILE)
        manifest = _manifest(model, model_dir, model_config, steps, config, max_seq, windows, tokenizer_src)
        manifest["files"] = files_table(tmp, [g.name for g in graphs] + [WEIGHTS_FILE, TOKENIZER_FILE])
        write_manifest(tmp, manifest)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        _move_into_place(tmp, target, config.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    wall_s = time.perf_counter() - began
    logger.info("exported %s (%s, %d files, %.1f MB) in %.1f s", target, config.precision, len(sizes),
                sum(sizes.values()) / 1e6, wall_s)
    return ExportReport(target, config.precision, sizes, diffs, wall_s)


def _require_export_dependencies() -> None:
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"exporting needs {' and '.join(missing)}: pip install 'elma[export]'")


def _check_target(target: Path, overwrite: bool, model_dir: Optional[Path] = None) -> None:
    """An existing bundle at ``target`` is replaced only with ``overwrite``; any other folder or file never."""
    try:
        check_outputs([Output(target, "-o", folder=True, what="a bundle", replaces=(MANIFEST_NAME,))], overwrite,
                      inputs=[model_dir])
    except OutputExistsError as err:
        raise ExportTargetExists(str(err)) from None


def _resolve_max_seq_length(model, config: ExportConfig) -> int:
    limit = model.config.max_position_embeddings
    wanted = config.max_seq_length or model.exit_config.max_seq_length
    if wanted > limit:
        how = "--max-seq-length" if config.max_seq_length else f"the model's max_seq_length ({wanted}); pass --max-seq-length"
        raise ExportError(f"{how} must be at most max_position_embeddings = {limit} (got {wanted})")
    return wanted


def _window_config(model, max_seq: int) -> WindowConfig:
    ec = model.exit_config
    try:
        return WindowConfig(max_seq, ec.doc_stride, ec.max_query_length)
    except ValueError as err:
        raise ExportError(f"--max-seq-length {max_seq} does not fit the model's windows (doc_stride {ec.doc_stride}, "
                          f"max_query_length {ec.max_query_length}): {err}") from err


def _tokenizer_source(model_dir: Path) -> Path:
    for name in (TOKENIZER_FILE, "spiece.model"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelLoadError(f"{model_dir}: no {TOKENIZER_FILE} (or spiece.model); a bundle needs the model's tokenizer")


def _write_tokenizer(src: Path, dst: Path) -> None:
    if src.name == TOKENIZER_FILE:
        shutil.copyfile(src, dst)
    else:  # SentencePiece: converted once here, so the device needs only `tokenizers`
        from elma.tokenization import load_tokenizer

        load_tokenizer(src).save(str(dst))


def _sample_inputs(config, batch: int, seq: int, seed: int, pad_rows: int):
    """Random ids (B, T) int32, a mask with the last ``pad_rows`` rows padded, question/context token types."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=gen, dtype=torch.int64).to(torch.int32)
    mask = torch.ones_like(ids)
    for row in range(batch - pad_rows, batch):
        keep = max(2, seq - 1 - row)
        mask[row, keep:] = 0
        ids[row, keep:] = config.pad_token_id or 0
    types = torch.zeros_like(ids)
    if getattr(config, "type_vocab_size", 0) > 1:  # DistilBERT has no token types
        types[:, seq // 3:] = 1
    return ids, mask, types


def _plan_graphs(steps, config, max_seq: int, seed: int) -> List[_Graph]:
    """Every graph of the bundle with its trace inputs and PyTorch reference outputs on two check shapes.

    Traced at (2, 8); checked at (3, min(24, max_seq)) with padded rows and at (1, max_seq), so that both
    symbolic axes and the longest window are exercised.
    """
    trace = _sample_inputs(config, 2, 8, seed, pad_rows=1)
    check_inputs = [_sample_inputs(config, 3, min(24, max_seq), seed + 1, pad_rows=2),
                    _sample_inputs(config, 1, max_seq, seed + 2, pad_rows=0)]

    def chain(ids, types, mask):
        """Hidden state entering each slot, and leaving it."""
        hidden = steps.embeddings(ids, types)
        entering, leaving = [], []
        for g in steps.layer_groups:
            entering.append(hidden)
            hidden = steps.groups[g](hidden, mask)
            leaving.append(hidden)
        return entering, leaving

    def np32(*tensors):
        return [t.detach().numpy() for t in tensors]

    t_ids, t_mask, t_types = trace
    t_in, t_out = chain(t_ids, t_types, t_mask)
    per_check = [(ids, mask, types, *chain(ids, types, mask)) for ids, mask, types in check_inputs]

    graphs = [_Graph(EMBEDDINGS_FILE, EMBEDDINGS_SPEC, steps.embeddings, (t_ids, t_types),
                     [(_feeds(EMBEDDINGS_SPEC, ids, types), np32(steps.embeddings(ids, types)))
                      for ids, mask, types, _, _ in per_check])]
    for g, group in enumerate(steps.groups):
        slot = steps.layer_groups.index(g)  # first slot that runs this group
        graphs.append(_Graph(group_file(g), GROUP_SPEC, group, (t_in[slot], t_mask),
                             [(_feeds(GROUP_SPEC, entering[slot], mask), np32(group(entering[slot], mask)))
                              for ids, mask, types, entering, _ in per_check]))
    for slot, head in enumerate(steps.exits):
        graphs.append(_Graph(exit_file(slot), EXIT_SPEC, head, (t_out[slot], t_mask),
                             [(_feeds(EXIT_SPEC, leaving[slot], mask), np32(*head(leaving[slot], mask)))
                              for ids, mask, types, _, leaving in per_check]))
    fused = steps.fused()
    graphs.append(_Graph(FUSED_FILE, FUSED_SPEC, fused, (t_ids, t_mask, t_types),
                         [(_feeds(FUSED_SPEC, ids, mask, types), np32(*fused(ids, mask, types)))
                          for ids, mask, types, _, _ in per_check]))
    assert {g.spec.kind for g in graphs} == set(SPECS), "every kind of graph is exported"
    return graphs


def _feeds(spec: LayerExportSpec, *tensors) -> Dict[str, np.ndarray]:
    return {t.name: x.detach().numpy().astype(t.dtype) for t, x in zip(spec.inputs, tensors)}


def _convert(src: Path, dst: Path, kind: str, config: ExportConfig) -> None:
    if config.precision == "fp16":
        to_fp16(src, dst)
    elif config.precision == "int8" and kind in INT8_KINDS:
        keep = INT8_KEEP_FP32 if config.int8_keep_fp32 is None else config.int8_keep_fp32
        to_int8(src, dst, keep)
    else:
        shutil.copyfile(src, dst)


def _manifest(model, model_dir: Path, model_config: dict, steps, config: ExportConfig, max_seq: int, windows: WindowConfig,
              tokenizer_src: Path) -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from elma.model.multi_exit import MASK_FILL, WEIGHTS_NAME
    from elma.runtime.bundle import sha256_file
    from elma.tokenization import load_tokenizer, pad_token_id

    num_layers = steps.num_layers
    backbone = Backbone.from_config(model_config)
    thresholds = list(model.exit_config.null_thresholds) or [0.0] * num_layers
    weights_sha256 = sha256_file(model_dir / WEIGHTS_NAME)
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {"model_type": backbone.model_type, "config_sha256": backbone.config_sha256},
        "num_layers": num_layers,
        "num_groups": len(steps.groups),
        "hidden_size": model.config.hidden_size,
        "precision": config.precision,
        "opset": config.opset,
        "max_seq_length": max_seq,
        "windows": {"max_seq_length": windows.max_seq_length, "doc_stride": windows.doc_stride,
                    "max_query_length": windows.max_query_length},
        "pad_token_id": pad_token_id(load_tokenizer(tokenizer_src)),
        "mask_fill": MASK_FILL,
        "embeddings": EMBEDDINGS_FILE,
        "layers": [group_file(g) for g in steps.layer_groups],  # slot -> graph
        "layer_groups": list(steps.layer_groups),
        "exits": [exit_file(slot) for slot in range(num_layers)],
        "fused": FUSED_FILE,
        "fused_returns": "last exit's start_logits and end_logits (B, T)",
        "weights": WEIGHTS_FILE,
        "tokenizer": TOKENIZER_FILE,
        "io": {kind: spec.io_table(model.config.hidden_size) for kind, spec in SPECS.items()},
        "null_thresholds": [float(t) for t in thresholds],  # per exit, from the model (training-time calibration)
        # the model's calibrated default exit policy (config.json); `elma calibrate BUNDLE` replaces it
        "exit_thresholds": _default_policy_entry(model_dir, model_config, weights_sha256),
        "engines": None,  # filled by `elma build-engines`
        "source": {"model_folder": model_dir.name, "weights_sha256": weights_sha256},
        "created_by": {"elma": elma.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                       "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                       "exporter": config.exporter},
    }


def _default_policy_entry(model_dir: Path, model_config: dict, weights_sha256: str):
    """The model folder's calibrated default policy as the manifest's ``exit_thresholds`` (None if it has none)."""
    from elma.runtime.defaults import from_model_config, manifest_entry

    stored = from_model_config(model_config, model_dir, check_weights=False)
    made_for = (stored.calibration or {}).get("weights_sha256")
    if isinstance(made_for, str) and made_for != weights_sha256:
        logger.warning("%s: its default policy %s was calibrated for other weights (%s...); the bundle gets none, "
                       "run `elma calibrate` again", model_dir, stored.spec, made_for[:12])
        return None
    return manifest_entry(stored)


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    _check_target(target, overwrite)  # again: something may have appeared there while exporting
    publish_dir(tmp, target, overwrite)



def export_summary(report: ExportReport) -> str:
    """One human-readable paragraph (the CLI prints it)."""
    lines = [f"bundle {report.bundle} ({report.precision}): {len(report.file_sizes_bytes)} files, "
             f"{report.total_size_bytes / 1e6:.2f} MB, exported and checked in {report.wall_s:.1f} s"]
    worst = max(report.max_abs_diff.items(), key=lambda kv: kv[1])
    lines.append(f"largest |onnxruntime - pytorch| {worst[1]:.2e} ({worst[0]})")
    return "\n".join(lines)
