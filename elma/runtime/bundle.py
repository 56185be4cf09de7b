"""Model bundles: the folder ``elma export`` writes and the runtime loads, verified.

A bundle holds one ONNX graph per step of the model (``elma.model.steps``):

    embeddings.onnx          input_ids, token_type_ids -> hidden_states
    group{g}.onnx            hidden_states, attention_mask -> layer_output   (ALBERT: one file for every slot)
    exit{l}.onnx             hidden_states, attention_mask -> start_logits, end_logits
    fused.onnx               input_ids, attention_mask, token_type_ids -> last exit's logits (the baseline)
    weights.bin              every weight tensor once, referenced by the graphs as ONNX external data
    tokenizer.json           the fast tokenizer
    manifest.json            what all this is, and the sha256 and size of every other file

plus, after ``elma build-engines``, one TensorRT ``.plan`` per graph. Layer
slots and exits are numbered from 0 in file names and in the manifest.

``load_bundle`` checks the format version, every file's presence, size and
sha256, and optionally the backbone, before it returns anything: a bundle is
either fully verified or refused with a ``BundleError`` naming the file. This
module needs only the standard library (it runs on the device, Python 3.8).
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from elma.errors import BundleError
from elma.fsutil import write_json

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EMBEDDINGS_FILE = "embeddings.onnx"
FUSED_FILE = "fused.onnx"
WEIGHTS_FILE = "weights.bin"
TOKENIZER_FILE = "tokenizer.json"
PRECISIONS = ("fp32", "fp16", "int8")

# Config keys that define the architecture (not the weights): the backbone fingerprint hashes these.
ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                     "embedding_size", "num_hidden_groups", "inner_group_num", "position_embedding_type")
_HASH_CHUNK_BYTES = 1 << 20


def group_file(group: int) -> str:
    return f"group{group}.onnx"


def exit_file(layer: int) -> str:
    return f"exit{layer}.onnx"


@dataclass(frozen=True)
class Backbone:
    """Which encoder architecture a bundle holds."""

    model_type: str  # e.g. "albert", "bert" (MiniLM is "bert")
    config_sha256: str  # backbone_fingerprint() of the encoder config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Backbone":
        """The backbone of an encoder config (a model folder's ``config.json`` as a dict)."""
        return cls(str(config.get("model_type")), backbone_fingerprint(config))


def backbone_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 over the architecture keys of an encoder config (absent keys left out), stable across exports."""
    arch = {k: config[k] for k in ARCHITECTURE_KEYS if k in config}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> Dict[str, Any]:
    """The manifest entry of one file: its sha256 and size in bytes."""
    return {"sha256": sha256_file(path), "size_bytes": Path(path).stat().st_size}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Paths are absolute; ``layers[l]`` is the graph run in slot ``l``."""

    root: Path
    format_version: int
    backbone: Backbone
    num_layers: int
    hidden_size: int
    precision: str  # "fp32", "fp16" or "int8" (weights; graph inputs and outputs are always as in ``io``)
    opset: int
    max_seq_length: int  # longest window the graphs were verified for and engines are profiled for
    embeddings: Path
    layers: Tuple[Path, ...]  # per slot; ALBERT: the same group file in every slot
    exits: Tuple[Path, ...]  # per slot
    fused: Path
    tokenizer: Path
    null_thresholds: Tuple[float, ...]  # per exit; from the model's config (calibrated at training time)
    io: Mapping[str, Any]  # per graph kind: input and output names, dtypes and symbolic shapes
    engines: Optional[Mapping[str, Any]]  # what ``elma build-engines`` recorded, None before
    manifest: Mapping[str, Any]  # the whole manifest, for fields added later (calibrated exit thresholds, ...)

    @property
    def group_files(self) -> Tuple[Path, ...]:
        """The distinct layer graphs, in slot order of first use."""
        return tuple(dict.fromkeys(self.layers))


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, its own ``manifest_sha256`` field left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def write_manifest(root: Path, manifest: Dict[str, Any]) -> None:
    """Seal ``manifest`` with its own checksum and write it atomically (the last file of a bundle written)."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    write_json(Path(root) / MANIFEST_NAME, manifest)


def read_manifest(root: Path) -> Dict[str, Any]:
    """The parsed manifest of the bundle at ``root`` (format version and own checksum checked, files not)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder; create one with `elma export MODEL -o {root}`")
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BundleError(f"{path}: missing; {root} is not a complete bundle (re-export it with `elma export`)") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err}); re-export the bundle with `elma export`") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: not a bundle manifest (a JSON object is expected)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            hint = "it was written by a newer ELMA: upgrade elma"
        else:
            hint = "re-export the model with this ELMA's `elma export`"
        raise BundleError(f"{path}: bundle format version {version!r}, this ELMA reads version {FORMAT_VERSION}; {hint}")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"{path}: its content differs from its own checksum (the manifest was edited or corrupted); "
                          f"re-export the bundle with `elma export`")
    return manifest


def load_bundle(path: Union[str, os.PathLike], expected_backbone: Union[None, str, Backbone] = None,
                verify_checksums: bool = True) -> Bundle:
    """Load and verify the bundle at ``path``.

    Args:
        path: the bundle folder.
        expected_backbone: refuse a bundle of another model type (a str such as ``"albert"``) or of another
            architecture (a ``Backbone``, e.g. ``Backbone.from_config(json.load(config.json))``).
        verify_checksums: hash every file (default). False checks presence and sizes only.

    Returns:
        The bundle, every file present with the size and sha256 the manifest records.

    Raises:
        BundleError: naming the first file that is missing, truncated or altered, or the manifest field at fault.
    """
    root = Path(path).resolve()
    manifest = read_manifest(root)
    where = root / MANIFEST_NAME
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: no 'files' table; re-export the bundle with `elma export`")
    for name in sorted(files):
        _check_file(root, name, files[name], verify_checksums)

    def field(key: str, kind: type) -> Any:
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise BundleError(f"{where}: field {key!r} is missing or not a {kind.__name__}; re-export the bundle")
        return value

    def member(name: Any) -> Path:
        if not isinstance(name, str) or name not in files:
            raise BundleError(f"{where}: refers to {name!r}, which has no checksum in 'files'; re-export the bundle")
        return root / name

    num_layers = field("num_layers", int)
    layers = tuple(member(n) for n in field("layers", list))
    exits = tuple(member(n) for n in field("exits", list))
    if not len(layers) == len(exits) == num_layers:
        raise BundleError(f"{where}: {len(layers)} layer slots and {len(exits)} exits for num_layers={num_layers}")
    precision = field("precision", str)
    if precision not in PRECISIONS:
        raise BundleError(f"{where}: unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    thresholds = tuple(float(t) for t in field("null_thresholds", list))
    if thresholds and len(thresholds) != num_layers:
        raise BundleError(f"{where}: {len(thresholds)} null thresholds for {num_layers} exits")
    backbone_field = field("backbone", dict)
    backbone = Backbone(str(backbone_field.get("model_type")), str(backbone_field.get("config_sha256")))
    member(field("weights", str))
    engines = manifest.get("engines")
    if engines is not None:
        plans = engines.get("plans") if isinstance(engines, dict) else None
        if not isinstance(plans, dict):
            raise BundleError(f"{where}: 'engines' has no 'plans' table; rebuild with `elma build-engines {root}`")
        for plan in plans.values():
            member(plan)
    bundle = Bundle(
        root=root, format_version=FORMAT_VERSION, backbone=backbone, num_layers=num_layers,
        hidden_size=field("hidden_size", int), precision=precision, opset=field("opset", int),
        max_seq_length=field("max_seq_length", int), embeddings=member(manifest.get("embeddings")), layers=layers,
        exits=exits, fused=member(manifest.get("fused")), tokenizer=member(manifest.get("tokenizer")),
        null_thresholds=thresholds, io=field("io", dict), engines=engines, manifest=manifest)
    _check_backbone(bundle, expected_backbone)
    return bundle


def _check_file(root: Path, name: str, record: Any, verify_checksums: bool) -> None:
    if not _is_plain_name(name):
        raise BundleError(f"{root / MANIFEST_NAME}: file name {name!r} is not a plain name inside the bundle")
    path = root / name
    if not isinstance(record, dict) or not isinstance(record.get("size_bytes"), int) or not isinstance(
            record.get("sha256"), str):
        raise BundleError(f"{root / MANIFEST_NAME}: entry of {name} lacks 'sha256' or 'size_bytes'; re-export the bundle")
    if not path.is_file():
        raise BundleError(f"{path}: missing from the bundle; re-export it with `elma export` (or copy the file back)")
    size = path.stat().st_size
    if size != record["size_bytes"]:
        raise BundleError(f"{path}: {size} bytes, the manifest says {record['size_bytes']} (truncated or altered "
                          f"copy); copy the bundle again or re-export it")
    if verify_checksums and sha256_file(path) != record["sha256"]:
        raise BundleError(f"{path}: sha256 differs from the manifest (the file was altered or corrupted); "
                          f"copy the bundle again or re-export it")


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MANIFEST_NAME) and "/" not in name and "\\" not in name


def _check_backbone(bundle: Bundle, expected: Union[None, str, Backbone]) -> None:
    if expected is None:
        return
    got = bundle.backbone
    if isinstance(expected, str):
        if got.model_type != expected:
            raise BundleError(f"{bundle.root}: a {got.model_type} bundle, {expected} was expected; "
                              f"export the {expected} model (`elma export MODEL -o BUNDLE`)")
    elif got != expected:
        raise BundleError(f"{bundle.root}: backbone {got.model_type} {got.config_sha256[:12]} differs from the expected "
                          f"{expected.model_type} {expected.config_sha256[:12]}; export the matching model")


def update_manifest(root: Union[str, os.PathLike], changes: Mapping[str, Any], new_files: Iterable[str] = ()) -> Dict[str, Any]:
    """Merge ``changes`` into the manifest and record the checksums of ``new_files``; written atomically.

    Used by ``elma build-engines`` (engine files and targets) and calibration (exit thresholds). The other
    files are not re-hashed: load the bundle with ``load_bundle`` first to know they are intact.
    """
    root = Path(root)
    manifest = read_manifest(root)
    manifest.update(changes)
    files: Dict[str, Any] = dict(manifest.get("files") or {})
    for name in new_files:
        if not _is_plain_name(name):
            raise BundleError(f"{name!r} is not a plain file name inside the bundle")
        files[name] = file_record(root / name)
    manifest["files"] = files
    write_manifest(root, manifest)
    return manifest


def files_table(root: Path, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """``{name: {"sha256", "size_bytes"}}`` for the given files of ``root``."""
    return {name: file_record(Path(root) / name) for name in sorted(set(names))}


def io_names(bundle: Bundle, kind: str) -> Tuple[List[str], List[str]]:
    """Input and output tensor names of one graph kind ("embeddings", "group", "exit", "fused")."""
    spec = bundle.io[kind]
    return [t["name"] for t in spec["inputs"]], [t["name"] for t in spec["outputs"]]
