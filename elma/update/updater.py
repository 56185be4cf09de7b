"""``elma update``: check, download, verify, health-check and switch to a newer signed release.

    result = update(UpdateConfig(server_url, token, models_dir))      # -> UpdateResult(status, version, ...)

Order of the steps (each logged as ``step: NAME``), and what a refusal leaves:

1. **trust**: the device's root of trust, then each newer root from the server (``N+1.root.json``), each
   signed by the previous root's keys and its own (key rotation); the newest root must not be expired.
2. **check**: ``release.json`` (at most ``MAX_RELEASE_BYTES``), signed by the root's release keys; not expired
   (freeze); its version not below the highest this device has seen (rollback, remembered in ``state.json``),
   not marked bad; the elma version and the backbone of the installed model fit. The highest version seen is
   then persisted.
3. **download** into ``staging/<version>/`` (resumable ``.part`` files, each bounded by its signed size), after
   checking there is room; **verify** every file's sha256, and that the bundle's own manifest agrees.
4. **stage**: fsync and rename the folder into ``releases/<version>``.
5. **health**: the bundle loads and answers the release's canned questions as recorded; a failure marks the
   version bad (never retried) and removes it.
6. **swap**: ``current`` -> ``releases/<version>`` by rename; the old one becomes ``previous``.

A refusal at any step raises ``UpdateError`` before step 6, so the installed model is untouched; a kill at any
point is finished or redone by the next run (see ``elma.update.store``).

Device side: Python 3.8; the runtime is imported for the health check only.
"""

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from elma.errors import BundleError, UpdateError
from elma.runtime.bundle import MANIFEST_NAME, Backbone, load_bundle, read_manifest, sha256_file
from elma.update import health
from elma.update.client import DiskFullError, ReleaseClient
from elma.update.metadata import (
    MAX_RELEASE_BYTES,
    MAX_ROOT_BYTES,
    Release,
    check_not_expired,
    load_trusted_root,
    next_root,
    verify_release,
    version_tuple,
)
from elma.update.store import RELEASE_META, TRUST_ROOT, ModelStore

logger = logging.getLogger(__name__)

FREE_SPACE_MARGIN_BYTES = 1 << 20  # kept free beyond the download itself


@dataclass(frozen=True)
class UpdateConfig:
    """One ``elma update``; the flags map onto these fields."""

    server_url: str  # e.g. "http://10.0.0.2:8000" (elma-serve --releases)
    token: str  # this device's bearer token (the offload API's)
    models_dir: str  # see elma.update.store
    health_backend: Optional[str] = None  # runtime backend of the health check (default: onnxruntime)
    timeout_s: float = 30.0  # socket timeout of one request
    retries: int = 3  # resumed attempts per file after a dropped connection


@dataclass(frozen=True)
class UpdateResult:
    status: str  # "installed", "up-to-date", "bad" (offered release marked bad), "no-release"
    version: Optional[int]  # the release current now
    previous: Optional[int]  # the release kept for --rollback
    offered: Optional[int]  # the version the server offers
    bytes_received: int  # over the network, metadata included
    roots_updated: int  # newer root versions accepted (key rotations)
    wall_s: float


def _step(name: str) -> None:
    logger.info("step: %s", name)


def update(config: UpdateConfig, client: Optional[ReleaseClient] = None, now_s: Optional[float] = None,
           on_step: Callable[[str], None] = _step) -> UpdateResult:
    """Bring ``config.models_dir`` to the newest valid release; see the module docstring.

    Raises:
        UpdateError: a refusal (the installed model untouched); DiskFullError when the disk is full.
    """
    began_s = time.monotonic()
    client = client or ReleaseClient(config.server_url, config.token, config.timeout_s, config.retries)
    store = ModelStore(Path(config.models_dir))
    from elma.update.publish import RELEASE_FILE, root_file, target_file

    store.trusted_root()  # no root of trust: refused before anything is created
    with store.lock():
        on_step("trust")
        root = load_trusted_root(store.trusted_root(), str(store.root / TRUST_ROOT))
        roots_updated = 0
        while True:
            data = client.get_bytes(root_file(root.version + 1), MAX_ROOT_BYTES)
            if data is None:
                break
            root = next_root(root, data, f"root version {root.version + 1} from the server")
            store.save_root(data)
            roots_updated += 1
        check_not_expired(root.expires_unix_s, f"root metadata version {root.version}", now_s)

        on_step("check")
        current = store.current_version()

        def result(status: str, offered: Optional[int]) -> UpdateResult:
            return UpdateResult(status, store.current_version(), store.previous_version(), offered, client.bytes_received,
                                roots_updated, time.monotonic() - began_s)

        data = client.get_bytes(RELEASE_FILE, MAX_RELEASE_BYTES)
        if data is None:
            return result("no-release", None)
        release = verify_release(root, data, f"{client.base}{RELEASE_FILE}")
        check_not_expired(release.expires_unix_s, f"release {release.version}", now_s)
        state = store.load_state()
        if release.version < max(state.highest_version, current or 0):
            raise UpdateError(f"the server offers release {release.version}, older than release "
                              f"{max(state.highest_version, current or 0)} this device has seen: rollback refused")
        if release.version in state.bad:
            logger.warning("release %d is marked bad (%s); waiting for a newer one", release.version,
                           state.bad[release.version])
            return result("bad", release.version)
        if release.version == current:
            return result("up-to-date", release.version)
        _check_compatible(release, store, current)
        if release.version > state.highest_version:
            state.highest_version = release.version
            store.save_state(state)

        target = store.release_dir(release.version)
        if not _complete(target, release):
            try:
                _download(store, client, release, data, lambda name: target_file(release.version, name), on_step)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(f"no space left on the device while staging release {release.version} "
                                        f"({err.strerror})") from err
                raise
            on_step("stage")
            target = store.commit_staged(release.version)

        on_step("health")
        try:
            health.check(target, release.health, config.health_backend)
        except UpdateError as err:
            state = store.load_state()
            state.bad[release.version] = str(err)
            store.save_state(state)
            store.discard(release.version)
            raise UpdateError(f"release {release.version} failed its health check and is marked bad (never retried): "
                              f"{err}") from err
        on_step("swap")
        store.switch_to(release.version)
        logger.info("release %d is current (previous: %s)", release.version, store.previous_version())
        return result("installed", release.version)


def _check_compatible(release: Release, store: ModelStore, current: Optional[int]) -> None:
    from elma import __version__

    if version_tuple(__version__) < version_tuple(release.min_elma_version):
        raise UpdateError(f"release {release.version} needs elma >= {release.min_elma_version}, this is {__version__}; "
                          f"upgrade elma first")
    if current is None:
        return
    try:
        backbone = read_manifest(store.release_dir(current)).get("backbone", {})
    except BundleError as err:
        raise UpdateError(f"the installed release {current} is damaged ({err}); fix it with --rollback") from err
    want = {"model_type": backbone.get("model_type"), "config_sha256": backbone.get("config_sha256")}
    if dict(release.backbone) != want:
        raise UpdateError(f"release {release.version} is for backbone {release.backbone['model_type']} "
                          f"{release.backbone['config_sha256'][:12]}, the installed model is {want['model_type']} "
                          f"{str(want['config_sha256'])[:12]}: another backbone, refused")


def _file_ok(path: Path, record) -> bool:
    return path.is_file() and path.stat().st_size == record["size_bytes"] and sha256_file(path) == record["sha256"]


def _complete(folder: Path, release: Release) -> bool:
    """Is ``folder`` a release folder left by an earlier run with every file of ``release`` intact?"""
    if not folder.is_dir():
        return False
    ok = all(_file_ok(folder / name, rec) for name, rec in release.files.items())
    if not ok:
        shutil.rmtree(folder)
    return ok


def _download(store: ModelStore, client: ReleaseClient, release: Release, data: bytes, url_of, on_step) -> None:
    on_step("download")
    staging = store.staging_dir(release.version)
    keep = set(release.files) | {f"{n}.part" for n in release.files}
    for p in staging.iterdir():  # anything else (an older layout, a stray file) goes
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    needed = sum(rec["size_bytes"] - _have(staging, name) for name, rec in release.files.items())
    free = shutil.disk_usage(str(staging)).free
    if needed + FREE_SPACE_MARGIN_BYTES > free:
        if not any(staging.iterdir()):
            staging.rmdir()
        raise DiskFullError(f"release {release.version} needs {needed / 1e6:.1f} MB more, {free / 1e6:.1f} MB are free "
                            f"in {store.root}")
    for name in sorted(release.files):
        rec = release.files[name]
        final = staging / name
        if final.exists():
            if _file_ok(final, rec):
                continue
            final.unlink()
        part = staging / f"{name}.part"
        client.download(url_of(name), part, rec["size_bytes"])
        on_step("verify")
        if sha256_file(part) != rec["sha256"]:
            part.unlink()
            raise UpdateError(f"{client.base}{url_of(name)}: sha256 differs from the signed release {release.version} "
                              f"(damaged or tampered with); refused")
        os.replace(str(part), str(final))
    with open(staging / RELEASE_META, "wb") as f:
        f.write(data)
    b = release.backbone
    try:
        bundle = load_bundle(staging, expected_backbone=Backbone(b["model_type"], b["config_sha256"]))
    except BundleError as err:
        raise UpdateError(f"release {release.version}: the bundle does not match its release metadata ({err})") from err
    listed = set(bundle.manifest["files"]) | {MANIFEST_NAME}
    if listed != set(release.files):
        raise UpdateError(f"release {release.version}: the bundle's manifest lists {sorted(listed ^ set(release.files))} "
                          f"differently from the signed release; refused")


def _have(staging: Path, name: str) -> int:
    for candidate in (staging / name, staging / f"{name}.part"):
        if candidate.exists():
            return candidate.stat().st_size
    return 0
