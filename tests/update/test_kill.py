"""kill -9 of `elma update` at every step (trust, check, download, verify, stage, health, swap) and at random
times: afterwards `current` resolves to a complete, verified release (the old or the new one), and the next
update completes. ~20 kills in the normal suite, 200 in the slow one."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("nacl")
pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from update_helpers import TOKEN, Keys, new_device, new_repo, serve, update_argv  # noqa: E402

from elma.runtime.bundle import load_bundle  # noqa: E402
from elma.update import publish as pub  # noqa: E402
from elma.update.metadata import load_trusted_root, verify_release  # noqa: E402
from elma.update.store import ModelStore  # noqa: E402
from elma.update.updater import UpdateConfig, update  # noqa: E402

STEPS = ("trust", "check", "download", "verify", "stage", "health", "swap")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tiny_bundles, tmp_path_factory):
    """A server offering release 2 and a device template with release 1 installed."""
    tmp = tmp_path_factory.mktemp("kill")
    bundle = tiny_bundles.bundle("bert")
    keys = Keys(tmp)
    repo = new_repo(tmp, keys)
    pub.publish(repo, bundle, keys.release)
    server = serve(repo, tmp)
    template = new_device(tmp, repo)
    assert update(UpdateConfig(server.url, TOKEN, str(template))).version == 1
    pub.publish(repo, bundle, keys.release)
    yield tmp, repo, server, template
    server.stop()


def check_complete(models: Path, repo: Path) -> int:
    """``current`` is a complete bundle whose files match a release signed in the repository; its version."""
    store = ModelStore(models)
    version = store.current_version()
    assert version in (1, 2)
    bundle = load_bundle(models / "current")  # every file's size and sha256
    root = load_trusted_root((repo / "root/1.root.json").read_bytes(), "root")
    release = verify_release(root, (models / "current" / "release.json").read_bytes(), "release")
    assert release.version == version
    for name, rec in release.files.items():
        assert (bundle.root / name).stat().st_size == rec["size_bytes"]
    return version


def kill_loop(world, kills: int, seed: int):
    tmp, repo, server, template = world
    rng = random.Random(seed)
    models = tmp / f"device-{seed}"
    hit, landed = Counter(), Counter()
    for i in range(kills):
        shutil.rmtree(models, ignore_errors=True)
        shutil.copytree(template, models, symlinks=True)
        step = STEPS[i % len(STEPS)] if i % 4 else None  # 3 in 4 kills after a chosen step, 1 in 4 at a random time
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from elma.cli import main; sys.exit(main())"]
                                + update_argv(server, tmp, models), env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        last = None
        if step is None:
            time.sleep(rng.uniform(0.0, 2.0))
        else:
            for line in proc.stderr:
                if "step: " in line:
                    last = line.split("step: ")[1].strip()
                    if last == step:
                        break
            time.sleep(rng.uniform(0.0, 0.03))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        hit[step or "random"] += 1
        if alive:
            landed[last or "random"] += 1
        version = check_complete(models, repo)
        assert version in (1, 2)
        r = update(UpdateConfig(server.url, TOKEN, str(models)))  # the next update completes
        assert r.status in ("installed", "up-to-date") and r.version == 2, r
        assert check_complete(models, repo) == 2
        assert not (models / "staging" / "2").exists() or not any((models / "staging" / "2").iterdir())
    return hit, landed


def test_kill_9_at_every_step_leaves_a_complete_release(world):
    hit, landed = kill_loop(world, kills=21, seed=1)
    assert sum(hit.values()) == 21 and set(STEPS) <= set(hit)


@pytest.mark.slow
def test_kill_9_two_hundred_times(world):
    hit, landed = kill_loop(world, kills=200, seed=2)
    assert sum(hit.values()) == 200
    assert {"download", "verify", "health"} <= set(landed), landed  # killed while those steps ran
