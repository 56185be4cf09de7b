"""A model folder's ONNX bundle, exported on first use and cached, so that asking it a question skips PyTorch.

``elma-ask`` on the shipped model folder used to import torch and transformers (seconds) for a 40 ms answer.
``open_cached`` exports the folder once (``elma export``, fp32: the torch answers within 1e-4) into

    <cache_dir()>/bundles/<fingerprint>/        the bundle, published by renaming a finished folder
    <cache_dir()>/bundles/<fingerprint>.lock    flock: one exporter per entry; readers hold it shared while opening
    <cache_dir()>/bundles/<fingerprint>.json    which model folder it came from (older entries of it are pruned)

and every later call loads it with ONNX Runtime, without importing torch. The fingerprint hashes what the
bundle is made of: the weights' and tokenizer's sha256, config.json without the default policy, the bundle
format and the export settings; a changed model gets a new entry. The default policy is not part of it: it
is read from the model folder at every call (``elma.runtime.defaults``), so ``elma calibrate`` on the folder
takes effect without a re-export.

Never half-used: ``elma export`` builds in a temporary folder and renames it into place, so an entry is whole
or absent; leftovers of a killed export (``.<fingerprint>.export-*``) are removed by the next exporter, under
the lock. An entry is loaded with sizes checked, not hashes (we wrote it; hashing 90 MB would cost what this
cache saves); one that fails to load is moved aside and exported again.

Standard library at module level; torch and onnx only inside the export (device side, Python 3.8).
"""

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from elma.errors import BundleError, ElmaError, ExportError

try:  # POSIX; without it (Windows) concurrent first uses may both export, and the second one fails cleanly
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

CACHE_PRECISION = "fp32"  # answers as the torch reference does (within 1e-4): the calibrated policy holds
CACHE_OPSET = 17
EXPORT_MODULES = ("torch", "transformers", "onnx", "onnxruntime")  # the export extra, found without importing it
POLICY_KEYS = ("default_policy", "calibration")  # config.json keys that do not change the bundle's graphs
Notify = Callable[[str], None]


@dataclass(frozen=True)
class CachedBundle:
    """A cache entry ready to load."""

    path: Path  # the bundle folder
    fingerprint: str
    exported_s: Optional[float]  # export wall time when this call exported it, None when it was there


def bundles_dir() -> Path:
    from elma.paths import cache_dir

    return cache_dir() / "bundles"


def model_fingerprint(model_dir: Union[str, os.PathLike]) -> str:
    """sha256 (hex, 32 digits) of what the model folder's bundle is made of; see the module docstring.

    Raises:
        ModelLoadError: no config.json, weights or tokenizer.json.
    """
    from elma import __version__
    from elma.errors import ModelLoadError
    from elma.runtime.bundle import FORMAT_VERSION
    from elma.runtime.filehash import sha256_memo, sha256_of

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: neither a bundle (manifest.json) nor an ELMA model folder (config.json)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        weights = sha256_memo(folder / "model.safetensors")
        tokenizer = sha256_of(folder / "tokenizer.json")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{folder}: not a complete ELMA model folder ({err})") from err
    if isinstance(config.get("elma"), dict):
        config["elma"] = {k: v for k, v in config["elma"].items() if k not in POLICY_KEYS}
    body = {"weights_sha256": weights, "tokenizer_sha256": tokenizer, "config": config, "format_version": FORMAT_VERSION,
            "precision": CACHE_PRECISION, "opset": CACHE_OPSET, "elma": __version__}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def ensure_bundle(model_dir: Union[str, os.PathLike], root: Optional[Path] = None,
                  notify: Optional[Notify] = None) -> CachedBundle:
    """The cached bundle of ``model_dir``, exported first if it is not there.

    Args:
        root: the cache's bundle folder (default ``bundles_dir()``).
        notify: called with one line before a slow step (the CLI prints it on stderr).

    Raises:
        ExportError: the export extra is missing (onnx, onnxruntime, torch) or the export failed.
        ModelLoadError: the model folder is incomplete.
    """
    folder = Path(model_dir).resolve()
    root = Path(root) if root is not None else bundles_dir()
    fingerprint = model_fingerprint(folder)
    entry = root / fingerprint
    if (entry / "manifest.json").is_file():
        return CachedBundle(entry, fingerprint, None)
    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]  # before saying anything
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}: pip install 'elma[export]'")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create the bundle cache {root} ({err.strerror}); set ELMA_CACHE_DIR to a "
                          f"writable folder") from err
    with _locked(root, fingerprint, exclusive=True):
        if (entry / "manifest.json").is_file():  # another process exported it while we waited
            return CachedBundle(entry, fingerprint, None)
        _remove_leftovers(root, fingerprint)
        if entry.exists():  # a folder without a manifest: not ours to trust
            _move_aside_and_remove(entry)
        (notify or logger.info)(f"first use of {folder}: exporting it once to an ONNX bundle in {entry} "
                                f"(tens of seconds); later calls start without PyTorch")
        began = time.perf_counter()
        _export(folder, entry)
        exported_s = time.perf_counter() - began
        _write_origin(root, fingerprint, folder)
    _prune_older(root, fingerprint, folder)
    return CachedBundle(entry, fingerprint, exported_s)


def open_cached(model_dir: Union[str, os.PathLike], policy=None, root: Optional[Path] = None,
                notify: Optional[Notify] = None, **backend_options):
    """A ``Runtime`` on the cached ONNX bundle of ``model_dir`` (exported first if needed).

    The default policy is the model folder's (``elma.runtime.defaults``), as ``Runtime.open(model_dir)`` would
    use. An entry that fails to load is exported again, once.

    Raises:
        ExportError: the bundle cannot be exported here (the caller may fall back to ``Runtime.open``, torch).
        ImportError: onnxruntime is not installed.
        BundleError, ModelLoadError, ValueError: as ``Runtime.open``.
    """
    folder = Path(model_dir).resolve()
    cached = ensure_bundle(folder, root, notify)
    try:
        return _open(folder, cached, policy, backend_options)
    except BundleError as err:
        (notify or logger.warning)(f"the cached bundle {cached.path} cannot be used ({err}); exporting it again")
        with _locked(cached.path.parent, cached.fingerprint, exclusive=True):
            _move_aside_and_remove(cached.path)
        return _open(folder, ensure_bundle(folder, root, notify), policy, backend_options)


def _open(folder: Path, cached: CachedBundle, policy, backend_options):
    from elma.runtime.backends import OrtBackend
    from elma.runtime.bundle import load_bundle
    from elma.runtime.defaults import read_default
    from elma.runtime.engine import Runtime, bundle_info

    stored = read_default(folder)  # the folder's current default, not the one copied at export time
    with _locked(cached.path.parent, cached.fingerprint, exclusive=False):
        bundle = load_bundle(cached.path, verify_checksums=False)
        info = replace(bundle_info(bundle), default_policy=stored.spec, policy_source=stored.source)
        backend = OrtBackend(bundle, **backend_options)
    try:
        return Runtime(backend, info, policy)
    except BaseException:
        backend.close()
        raise


def _export(folder: Path, entry: Path) -> None:
    import warnings

    try:
        from elma.export.bundle_writer import export_bundle
        from elma.export.specs import ExportConfig

        with warnings.catch_warnings():  # tracer and deprecation warnings of torch.onnx say nothing to a user here
            warnings.simplefilter("ignore")
            export_bundle(folder, entry, ExportConfig(precision=CACHE_PRECISION, opset=CACHE_OPSET))
    except ImportError as err:
        raise ExportError(f"exporting needs the export extra ({err.name or err}): pip install 'elma[export]'") from err
    except ElmaError:  # ExportError, ModelLoadError: already one line that says what to do
        raise
    except (RuntimeError, ValueError, OSError) as err:  # torch.onnx and onnxruntime failures
        raise ExportError(f"exporting {folder} failed: {' '.join(str(err).split())[:300]}") from err


@contextlib.contextmanager
def _locked(root: Path, fingerprint: str, exclusive: bool) -> Iterator[None]:
    try:
        f = open(root / f"{fingerprint}.lock", "a+b") if fcntl is not None else None
    except OSError as err:
        if exclusive:  # writing an entry needs the lock
            raise ExportError(f"cannot write the bundle cache {root} ({err.strerror}); set ELMA_CACHE_DIR to a "
                              f"writable folder") from err
        f = None  # a read-only cache: readers only, no exporter to wait for
    if f is None:
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(root: Path, fingerprint: str) -> None:
    """Temporary folders of killed exports or removals of this entry (we hold its lock: none is running)."""
    for prefix in (f".{fingerprint}.export-", f".{fingerprint}.old-"):
        for path in root.glob(prefix + "*"):
            logger.info("removing %s, left by an export or removal that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _move_aside_and_remove(entry: Path) -> None:
    """Rename first, so that ``entry`` is whole or absent even if the removal is killed."""
    if not entry.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=str(entry.parent)))
    os.rmdir(aside)
    os.rename(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _write_origin(root: Path, fingerprint: str, folder: Path) -> None:
    from elma.fsutil import write_json

    write_json(root / f"{fingerprint}.json", {"model_dir": str(folder), "exported_unix_s": time.time()})


def _prune_older(root: Path, fingerprint: str, folder: Path) -> None:
    """Remove the entries of earlier versions of the same model folder that no one is opening right now."""
    for origin in root.glob("*.json"):
        other = origin.stem
        if other == fingerprint:
            continue
        try:
            if json.loads(origin.read_text(encoding="utf-8")).get("model_dir") != str(folder):
                continue
        except (OSError, ValueError, AttributeError):
            continue
        if fcntl is None:
            continue
        with open(root / f"{other}.lock", "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use: left for a later call
            try:
                _move_aside_and_remove(root / other)
                origin.unlink()
                logger.info("removed %s, the cached bundle of an earlier version of %s", root / other, folder)
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
