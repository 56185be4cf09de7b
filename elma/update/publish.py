"""The publishing side: a release repository of signed bundles (``elma keys``, ``elma publish``).

Repository layout (static files; ``elma-serve --releases DIR`` or any web server can serve it)::

    DIR/root/1.root.json, 2.root.json, ...   every root version (devices walk the chain from theirs)
    DIR/release.json                         the newest release, signed (written last: publishing is atomic)
    DIR/targets/<version>/release.json       each release's signed manifest (history)
    DIR/targets/<version>/<file>             the bundle's files

Private keys stay in their files on the publishing machine; only public keys and signatures go into the
repository. Server side, but Python 3.8 clean like the rest of ``elma.update``.
"""

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from elma.errors import OutputExistsError, UpdateError, UsageError
from elma.fsutil import atomic_write
from elma.update.metadata import (
    RELEASE_TYPE,
    ROOT_TYPE,
    SPEC_VERSION,
    Root,
    dump_envelope,
    load_trusted_root,
    next_root,
    verify_release,
)
from elma.update.signing import PrivateKey, public_entry, sign

logger = logging.getLogger(__name__)

DAY_S = 86400
ROOT_DIR, TARGETS_DIR, RELEASE_FILE = "root", "targets", "release.json"


def root_file(version: int) -> str:
    return f"{ROOT_DIR}/{version}.root.json"


def target_file(version: int, name: str) -> str:
    return f"{TARGETS_DIR}/{version}/{name}"


def _write(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def _root_signed(version: int, root_keys: Sequence[PrivateKey], release_keys: Sequence[PrivateKey],
                 expires_days: float) -> Dict[str, Any]:
    keys = {k.keyid: public_entry(k) for k in list(root_keys) + list(release_keys)}
    return {"_type": ROOT_TYPE, "spec_version": SPEC_VERSION, "version": version,
            "expires_unix_s": int(time.time() + expires_days * DAY_S), "keys": keys,
            "roles": {"root": {"keyids": sorted({k.keyid for k in root_keys}), "threshold": 1},
                      "release": {"keyids": sorted({k.keyid for k in release_keys}), "threshold": 1}}}


def init_repo(repo: Path, root_key: PrivateKey, release_key: PrivateKey, expires_days: float = 365.0) -> Path:
    """Create ``repo`` with root version 1 (self-signed by ``root_key``); returns the root file to give devices.

    Raises:
        OutputExistsError: the repository already has root metadata.
    """
    repo = Path(repo)
    if (repo / ROOT_DIR).exists():
        raise OutputExistsError(f"{repo} already has root metadata; rotate keys with `elma keys rotate`")
    signed = _root_signed(1, [root_key], [release_key], expires_days)
    path = repo / root_file(1)
    _write(path, dump_envelope(sign(signed, [root_key])))
    return path


def latest_root(repo: Path) -> Root:
    """The newest root of ``repo``, verified along the chain from version 1."""
    repo = Path(repo)
    path = repo / root_file(1)
    if not path.is_file():
        raise UsageError(f"{repo}: no root metadata; create the repository with `elma keys init --repo {repo} ...`")
    root = load_trusted_root(path.read_bytes(), str(path))
    while (repo / root_file(root.version + 1)).is_file():
        p = repo / root_file(root.version + 1)
        root = next_root(root, p.read_bytes(), str(p))
    return root


def rotate(repo: Path, old_root_key: PrivateKey, new_root_key: Optional[PrivateKey], release_key: PrivateKey,
           expires_days: float = 365.0) -> Path:
    """Write root version N+1 naming ``new_root_key`` (or the old one kept) and ``release_key``, signed by the old and
    the new root key; returns its path. Re-sign the newest release with the new release key afterwards
    (``elma publish --refresh``) so that devices that moved to the new root accept it."""
    root = latest_root(repo)
    if old_root_key.keyid not in root.roles["root"].keyids:
        raise UsageError(f"--root-key {old_root_key.keyid[:16]}... is not a root key of root version {root.version}")
    new_root = new_root_key or old_root_key
    signed = _root_signed(root.version + 1, [new_root], [release_key], expires_days)
    signers = [old_root_key] if new_root.keyid == old_root_key.keyid else [old_root_key, new_root]
    path = Path(repo) / root_file(root.version + 1)
    _write(path, dump_envelope(sign(signed, signers)))
    next_root(root, path.read_bytes(), str(path))  # what a device will check
    return path


def latest_version(repo: Path) -> int:
    """The version of the repository's newest release (0 when none). Read from the publisher's own file, so that a
    release signed by a key rotated out since still counts."""
    path = Path(repo) / RELEASE_FILE
    if not path.is_file():
        return 0
    try:
        version = json.loads(path.read_text(encoding="utf-8"))["signed"]["version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UpdateError(f"{path}: unreadable ({err}); restore it from targets/<version>/release.json") from err
    if not isinstance(version, int):
        raise UpdateError(f"{path}: no integer version; restore it from targets/<version>/release.json")
    return version


@dataclass(frozen=True)
class PublishResult:
    version: int
    files: int
    total_bytes: int
    expires_unix_s: int
    path: Path  # the release folder in the repository


def _check_key(root: Root, key: PrivateKey) -> None:
    if key.keyid not in root.roles["release"].keyids:
        raise UsageError(f"--key {key.keyid[:16]}... is not a release key of root version {root.version}; use the "
                         f"current release key or rotate with `elma keys rotate`")


def scores_from_report(path: Path) -> Dict[str, Any]:
    """The held-out scores of an ``elma finetune`` report; a report of a refused model is refused."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read the finetune report ({err})") from err
    if not isinstance(report, dict) or "published" not in report or "new_f1" not in report:
        raise UsageError(f"{path}: not a finetune_report.json of `elma finetune`")
    if not report["published"]:
        raise UsageError(f"{path}: the finetuned model was not better than its base and was not published; "
                         f"nothing to release")
    return {"heldout_file": report.get("config", {}).get("heldout_file"), "base_f1": report["base_f1"],
            "new_f1": report["new_f1"], "exits": report.get("new_exits")}


def publish(repo: Path, bundle: Path, key: PrivateKey, expires_days: float = 30.0,
            scores: Optional[Mapping[str, Any]] = None, health_questions: Sequence[Tuple[str, str]] = (),
            min_elma_version: Optional[str] = None) -> PublishResult:
    """Add ``bundle`` to ``repo`` as the next release, signed by ``key``.

    The bundle is verified (``load_bundle``), copied into ``targets/<version>/``, re-hashed there, its health
    expectations recorded by running the copy (``elma.update.health``), and ``release.json`` is written last.
    """
    from elma import __version__
    from elma.runtime.bundle import MANIFEST_NAME, load_bundle
    from elma.update import health

    repo = Path(repo)
    root = latest_root(repo)
    _check_key(root, key)
    loaded = load_bundle(bundle)  # BundleError (exit 3) names a damaged file
    version = latest_version(repo) + 1
    target = repo / TARGETS_DIR / str(version)
    if target.exists():
        raise OutputExistsError(f"{target} exists: another publish is running, or one was interrupted (remove it)")
    names = sorted(list(loaded.manifest["files"]) + [MANIFEST_NAME])
    tmp = repo / TARGETS_DIR / f".{version}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        for name in names:
            shutil.copyfile(loaded.root / name, tmp / name)
        from elma.runtime.bundle import file_record

        files = {name: file_record(tmp / name) for name in names}
        checks = health.expectations(tmp, health_questions or health.DEFAULT_QUESTIONS)
        now_s = int(time.time())
        signed = {"_type": RELEASE_TYPE, "spec_version": SPEC_VERSION, "version": version, "created_unix_s": now_s,
                  "expires_unix_s": int(now_s + expires_days * DAY_S),
                  "min_elma_version": min_elma_version or __version__,
                  "backbone": {"model_type": loaded.backbone.model_type, "config_sha256": loaded.backbone.config_sha256},
                  "files": files, "scores": dict(scores) if scores is not None else None,
                  "health": {"policy": health.POLICY, "checks": checks}}
        data = dump_envelope(sign(signed, [key]))
        verify_release(root, data, "the new release")  # what a device will check
        _write(tmp / RELEASE_FILE, data)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write(repo / RELEASE_FILE, data)
    logger.info("published release %d of %s (%d files)", version, bundle, len(files))
    return PublishResult(version, len(files), sum(f["size_bytes"] for f in files.values()), signed["expires_unix_s"],
                         target)


def refresh(repo: Path, key: PrivateKey, expires_days: float = 30.0) -> PublishResult:
    """Re-sign the newest release with a later expiry (and ``key``, e.g. after a rotation); same version and files."""
    repo = Path(repo)
    root = latest_root(repo)
    _check_key(root, key)
    path = repo / RELEASE_FILE
    if not path.is_file():
        raise UsageError(f"{repo}: no release to refresh; publish one with `elma publish BUNDLE --repo {repo}`")
    signed = dict(json.loads(path.read_text(encoding="utf-8"))["signed"])
    signed["expires_unix_s"] = int(time.time() + expires_days * DAY_S)
    data = dump_envelope(sign(signed, [key]))
    release = verify_release(root, data, "the refreshed release")
    _write(repo / target_file(release.version, RELEASE_FILE), data)
    _write(path, data)
    return PublishResult(release.version, len(release.files), release.total_bytes, release.expires_unix_s,
                         repo / TARGETS_DIR / str(release.version))
