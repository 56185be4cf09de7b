"""Helpers of the update tests: keys, a release repository of tiny bundles, elma-serve --releases on loopback,
and a device models folder. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

from elma.offload.server import BackgroundServer, RecordStore, ServeConfig, create_app, hash_token
from elma.runtime.bundle import read_manifest, write_manifest
from elma.update import publish as pub
from elma.update.signing import PrivateKey, generate_key
from elma.update.store import ModelStore

TOKEN = "device-token-0123456789"


class Keys:
    """A root and a release key on disk (the publishing machine)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root_file, self.release_file = folder / "root.key", folder / "release.key"
        self.root: PrivateKey = generate_key(self.root_file)
        self.release: PrivateKey = generate_key(self.release_file)


def new_repo(folder: Path, keys: Keys) -> Path:
    repo = folder / "repo"
    pub.init_repo(repo, keys.root, keys.release)
    return repo


def serve(repo: Path, folder: Path, answerer=None) -> BackgroundServer:
    store = RecordStore(f"sqlite:///{folder / 'server-records.sqlite3'}")
    app = create_app(ServeConfig(releases_dir=str(repo), rate_per_s=10_000, burst=10_000),
                     answerer or (lambda q, c: {}), store, {hash_token(TOKEN): "jetson-01"})
    return BackgroundServer(app).start()


def new_device(folder: Path, repo: Path) -> Path:
    """A models folder holding the repository's first root as its root of trust, and the token file."""
    models = folder / "models"
    ModelStore(models).save_root((repo / pub.root_file(1)).read_bytes(), overwrite=False)
    (folder / "device.token").write_text(TOKEN + "\n")
    return models


def update_argv(server: BackgroundServer, folder: Path, models: Path) -> list:
    return ["update", "--server", server.url, "--token-file", str(folder / "device.token"), "--models-dir", str(models)]


def snapshot(models: Path) -> Dict[str, bytes]:
    """Every file under ``releases/`` and where ``current`` points: what "untouched" compares."""
    files = {str(p.relative_to(models)): p.read_bytes() for p in sorted((models / "releases").rglob("*")) if p.is_file()}
    link = models / "current"
    files["current ->"] = os.readlink(link).encode() if link.is_symlink() else b""
    return files


def other_backbone_bundle(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` whose (re-sealed) manifest names another backbone fingerprint."""
    shutil.copytree(bundle, dest)
    manifest = read_manifest(dest)
    manifest["backbone"] = dict(manifest["backbone"], config_sha256="0" * 64)
    write_manifest(dest, manifest)
    return dest


def current_version(models: Path) -> Optional[int]:
    return ModelStore(models).current_version()


def release_json(repo: Path) -> dict:
    return json.loads((repo / pub.RELEASE_FILE).read_text())
