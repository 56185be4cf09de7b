"""The device's model folder: installed releases, staging, the trusted root, and an atomic ``current`` switch.

Layout of ``MODELS_DIR`` (``$ELMA_MODELS_DIR``, default ``~/.local/share/elma/models``)::

    current -> releases/7        symlink: what elma-ask, elma-bench and the offload client run
    previous -> releases/6       symlink: kept for ``elma update --rollback``
    releases/<version>/          complete, verified bundles (plus their signed release.json)
    staging/<version>/           a download in progress (``*.part`` files grow; resumable)
    trust/root.json              the root of trust (provisioned once, then updated along the signed chain)
    state.json                   highest release version seen, releases marked bad (never retried)
    .lock                        held (flock) by the running ``elma update``

Crash safety: a release folder is complete, hashed and fsynced (files, then the folder, then its parent) before
it is renamed from ``staging/`` into ``releases/``; ``current`` is switched by creating a new symlink under a
temporary name and renaming it over the old one (``rename`` is atomic), then fsyncing ``MODELS_DIR``. A kill at
any point leaves ``current`` on the old release or the new one, and the next run finishes or redoes the rest.

Device side: Python 3.8, standard library only (POSIX: symlinks, ``fcntl``).
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from elma.errors import OutputExistsError, UpdateError

CURRENT, PREVIOUS = "current", "previous"
RELEASES, STAGING, TRUST_ROOT, STATE = "releases", "staging", "trust/root.json", "state.json"
RELEASE_META = "release.json"  # the signed release manifest, kept inside each release folder


def fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that the names created, renamed or removed in it are durable."""
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, fsync it, rename it over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(str(tmp), str(path))
    fsync_dir(path.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative) atomically: a new symlink renamed over the old one."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(tmp))
    os.symlink(target, str(tmp))
    os.replace(str(tmp), str(link))
    fsync_dir(link.parent)


@dataclass
class UpdateState:
    """What the device remembers across updates (``state.json``)."""

    highest_version: int = 0  # highest release version whose signature verified: anything lower is a rollback
    bad: Dict[int, str] = field(default_factory=dict)  # version -> why it was refused (health check, rolled back)


class ModelStore:
    """The models folder of one device; see the module docstring for the layout."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # ---- paths and reading ------------------------------------------------------------------------------------

    def release_dir(self, version: int) -> Path:
        return self.root / RELEASES / str(version)

    def _link_version(self, name: str) -> Optional[int]:
        link = self.root / name
        if not link.is_symlink():
            if link.exists():
                raise UpdateError(f"{link} is not a symlink; elma update manages {self.root} (move that folder away)")
            return None
        target = os.readlink(str(link))
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != RELEASES or not parts[1].isdigit():
            raise UpdateError(f"{link} points to {target}, not to {RELEASES}/<version>; repair it or remove it")
        return int(parts[1])

    def current_version(self) -> Optional[int]:
        """The installed release (``current``), None before the first update."""
        return self._link_version(CURRENT)

    def previous_version(self) -> Optional[int]:
        return self._link_version(PREVIOUS)

    def installed_versions(self) -> List[int]:
        d = self.root / RELEASES
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

    def load_state(self) -> UpdateState:
        path = self.root / STATE
        if not path.exists():
            return UpdateState()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return UpdateState(int(data["highest_version"]), {int(k): str(v) for k, v in data["bad"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UpdateError(f"{path}: unreadable update state ({err}); it remembers the highest version seen, so it "
                              f"is not reset silently: restore it or remove it on purpose") from err

    def save_state(self, state: UpdateState) -> None:
        data = {"highest_version": state.highest_version, "bad": {str(k): v for k, v in sorted(state.bad.items())}}
        write_durable(self.root / STATE, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def trusted_root(self) -> bytes:
        path = self.root / TRUST_ROOT
        try:
            return path.read_bytes()
        except FileNotFoundError as err:
            raise UpdateError(f"{path}: no root of trust on this device; install the repository's first root once "
                              f"with `elma update --trust-root 1.root.json --models-dir {self.root}`") from err

    def save_root(self, data: bytes, overwrite: bool = True) -> None:
        path = self.root / TRUST_ROOT
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; the device already has a root of trust (it is updated along the "
                                    f"signed chain by `elma update`)")
        write_durable(path, data)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` for one update (released by the kernel if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.root / ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise UpdateError(f"another elma update is running on {self.root}; try again when it ends") from err
                raise
            yield
        finally:
            os.close(fd)

    # ---- staging and installing -------------------------------------------------------------------------------

    def staging_dir(self, version: int) -> Path:
        """``staging/<version>``, created if needed; staging folders of other versions are removed."""
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        for p in staging.iterdir():
            if p.name != str(version):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        d = staging / str(version)
        d.mkdir(exist_ok=True)
        return d

    def commit_staged(self, version: int) -> Path:
        """fsync the staged files and folder, then rename it to ``releases/<version>``; returns that path."""
        src, dst = self.root / STAGING / str(version), self.release_dir(version)
        for p in src.iterdir():
            fsync_file(p)
        fsync_dir(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():  # left by a run killed before it was current, never half-written: replace it
            shutil.rmtree(dst)
        os.rename(str(src), str(dst))
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return dst

    def switch_to(self, version: int) -> None:
        """Make ``releases/<version>`` current; the old current becomes ``previous``; older releases are removed."""
        if not self.release_dir(version).is_dir():
            raise UpdateError(f"{self.release_dir(version)}: no such release to switch to")
        old = self.current_version()
        if old is not None and old != version:
            replace_symlink(self.root / PREVIOUS, f"{RELEASES}/{old}")
        replace_symlink(self.root / CURRENT, f"{RELEASES}/{version}")
        self.clean()

    def rollback(self) -> int:
        """Switch back to ``previous``; the release rolled back from is marked bad and removed. Returns the version."""
        current, previous = self.current_version(), self.previous_version()
        if previous is None or previous == current or not self.release_dir(previous).is_dir():
            raise UpdateError(f"{self.root}: no previous release to roll back to")
        if current is not None:
            state = self.load_state()
            state.bad[current] = "rolled back by `elma update --rollback`"
            self.save_state(state)
        replace_symlink(self.root / CURRENT, f"{RELEASES}/{previous}")
        os.unlink(str(self.root / PREVIOUS))
        fsync_dir(self.root)
        self.clean()
        return previous

    def discard(self, version: int) -> None:
        """Remove a release folder that is not current (a failed health check)."""
        if version == self.current_version():
            raise UpdateError(f"release {version} is current; it is not removed")
        shutil.rmtree(self.release_dir(version), ignore_errors=True)
        shutil.rmtree(self.root / STAGING / str(version), ignore_errors=True)

    def clean(self) -> None:
        """Remove releases other than current and previous, and leftover temporary names."""
        keep = {self.current_version(), self.previous_version()}
        for v in self.installed_versions():
            if v not in keep:
                shutil.rmtree(self.release_dir(v), ignore_errors=True)
        for p in self.root.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                with contextlib.suppress(OSError):
                    p.unlink()
