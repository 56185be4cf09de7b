"""elma update against elma-serve --releases on loopback: installs, keeps the previous release, rolls back; refuses
an older, expired, foreign-key, oversize, tampered or other-backbone release with one line and exit 3, the
installed model untouched; a failed health check is marked bad and never retried; a full disk says so."""

import json
import os
import shutil
import subprocess
import time

import pytest

pytest.importorskip("nacl")
pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from update_helpers import (  # noqa: E402
    TOKEN,
    Keys,
    current_version,
    new_device,
    new_repo,
    other_backbone_bundle,
    serve,
    snapshot,
    update_argv,
)

from elma.cli import main as elma_main  # noqa: E402
from elma.update import publish as pub  # noqa: E402
from elma.update.client import DiskFullError, ReleaseClient  # noqa: E402
from elma.update.metadata import dump_envelope  # noqa: E402
from elma.update.signing import generate_key, sign  # noqa: E402
from elma.update.store import ModelStore  # noqa: E402
from elma.update.updater import UpdateConfig, _file_ok, update  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return tiny_bundles.bundle("bert")


class Setup:
    def __init__(self, tmp_path, bundle):
        self.tmp, self.bundle = tmp_path, bundle
        self.keys = Keys(tmp_path)
        self.repo = new_repo(tmp_path, self.keys)
        pub.publish(self.repo, bundle, self.keys.release)
        self.server = serve(self.repo, tmp_path)
        self.models = new_device(tmp_path, self.repo)

    def run(self, capsys, *extra):
        capsys.readouterr()
        rc = elma_main(update_argv(self.server, self.tmp, self.models) + list(extra))
        out, err = capsys.readouterr()
        return rc, out, err

    def resign(self, change=None, key=None):
        """Re-sign release.json after ``change(signed)``, with ``key`` (default: the release key)."""
        env = json.loads((self.repo / "release.json").read_text())
        signed = env["signed"]
        if change:
            change(signed)
        (self.repo / "release.json").write_bytes(dump_envelope(sign(signed, [key or self.keys.release])))


@pytest.fixture
def s(tmp_path, bundle):
    setup = Setup(tmp_path, bundle)
    yield setup
    setup.server.stop()


def one_line_exit_3(rc, err, match):
    lines = err.strip().splitlines()
    assert rc == 3 and len(lines) == 1 and lines[0].startswith("elma update: error:") and match in lines[0], err
    assert "stays installed (unchanged)" in lines[0] or "nothing was installed" in lines[0]


def test_install_up_to_date_next_release_and_rollback(s, capsys):
    rc, out, _ = s.run(capsys)
    assert rc == 0 and "installed release 1" in out and current_version(s.models) == 1
    rc, out, _ = s.run(capsys)
    assert rc == 0 and "up to date: release 1" in out
    pub.publish(s.repo, s.bundle, s.keys.release)
    rc, out, _ = s.run(capsys)
    assert rc == 0 and "installed release 2 (previous 1)" in out
    store = ModelStore(s.models)
    assert store.current_version() == 2 and store.previous_version() == 1
    from elma.runtime.bundle import load_bundle

    assert load_bundle(s.models / "current").root == (s.models / "releases" / "2").resolve()
    capsys.readouterr()
    assert elma_main(["update", "--rollback", "--models-dir", str(s.models)]) == 0
    assert current_version(s.models) == 1 and "rolled back: release 1" in capsys.readouterr().out
    rc, out, _ = s.run(capsys)  # the release rolled back from is not installed again
    assert rc == 0 and "release 2 is marked bad" in out and current_version(s.models) == 1


def publish_older(s):
    old = (s.repo / "targets/1/release.json").read_bytes()
    pub.publish(s.repo, s.bundle, s.keys.release)
    return old


@pytest.mark.parametrize("attack, match", [
    ("older", "rollback refused"),
    ("expired", "expired on"),
    ("other key", "unknown key"),
    ("larger", "larger than"),
    ("backbone", "another backbone"),
    ("newer elma", "needs elma >= 99.0"),
    ("tampered", "sha256 differs"),
])
def test_refusals_are_one_line_exit_3_and_leave_the_model_untouched(s, capsys, attack, match):
    assert s.run(capsys)[0] == 0
    if attack == "older":  # the device saw 2; the server goes back to 1 (a validly signed, older release)
        old = publish_older(s)
        assert s.run(capsys)[0] == 0 and current_version(s.models) == 2
        (s.repo / "release.json").write_bytes(old)
    elif attack == "expired":
        pub.publish(s.repo, s.bundle, s.keys.release, expires_days=-1 / 86400)
    elif attack == "other key":
        pub.publish(s.repo, s.bundle, s.keys.release)
        s.resign(key=generate_key(s.tmp / "evil.key"))
    elif attack == "larger":
        pub.publish(s.repo, s.bundle, s.keys.release)
        with open(s.repo / "targets/2/weights.bin", "ab") as f:
            f.write(b"\0" * 4096)
    elif attack == "backbone":
        pub.publish(s.repo, other_backbone_bundle(s.bundle, s.tmp / "other"), s.keys.release)
    elif attack == "newer elma":
        pub.publish(s.repo, s.bundle, s.keys.release, min_elma_version="99.0")
    elif attack == "tampered":
        pub.publish(s.repo, s.bundle, s.keys.release)
        path = s.repo / "targets/2/weights.bin"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    before = snapshot(s.models)
    rc, _, err = s.run(capsys)
    one_line_exit_3(rc, err, match)
    assert snapshot(s.models) == before


def test_every_file_with_one_flipped_byte_is_refused_end_to_end(s, capsys):
    assert s.run(capsys)[0] == 0
    pub.publish(s.repo, s.bundle, s.keys.release)
    before = snapshot(s.models)
    target = s.repo / "targets" / "2"
    names = sorted(json.loads((target / "release.json").read_text())["signed"]["files"])
    for i, name in enumerate(names):
        path = target / name
        data = path.read_bytes()
        pos = (i * 7919) % len(data)
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        rc, _, err = s.run(capsys)
        one_line_exit_3(rc, err, "sha256 differs")
        assert name in err and snapshot(s.models) == before
        path.write_bytes(data)
    assert s.run(capsys)[0] == 0 and current_version(s.models) == 2


def test_a_dense_sample_of_flipped_bytes_in_every_file_is_refused(s):
    """Every byte of the first and last 64 of each file, and one every 16 KiB in between, flipped one at a time."""
    release = json.loads((s.repo / "release.json").read_text())["signed"]
    work = s.tmp / "flip"
    checked = 0
    for name, rec in release["files"].items():
        data = (s.repo / "targets/1" / name).read_bytes()
        assert _file_ok(s.repo / "targets/1" / name, rec)
        positions = set(range(min(64, len(data)))) | set(range(max(0, len(data) - 64), len(data)))
        positions |= set(range(0, len(data), 16384))
        for pos in sorted(positions):
            work.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
            assert not _file_ok(work, rec), (name, pos)
            checked += 1
    assert checked > 1000


def test_a_failed_health_check_is_marked_bad_and_never_retried(s, capsys):
    assert s.run(capsys)[0] == 0
    pub.publish(s.repo, s.bundle, s.keys.release)

    def wrong_answer(signed):  # a release whose bundle does not answer as its metadata says
        signed["health"]["checks"][0]["text"] = "certainly not this"
    s.resign(wrong_answer)
    before = snapshot(s.models)
    rc, _, err = s.run(capsys)
    one_line_exit_3(rc, err, "failed its health check and is marked bad")
    assert snapshot(s.models) == before and not (s.models / "releases" / "2").exists()
    rc, out, _ = s.run(capsys)
    assert rc == 0 and "release 2 is marked bad" in out and "bytes received" in out
    assert int(out.split(";")[-1].split()[0]) < 20_000  # metadata only: nothing downloaded again


def test_key_rotation_reaches_the_device_along_the_signed_chain(s, capsys):
    assert s.run(capsys)[0] == 0
    new_root, new_rel = generate_key(s.tmp / "root2.key"), generate_key(s.tmp / "rel2.key")
    pub.rotate(s.repo, s.keys.root, new_root, new_rel)
    pub.refresh(s.repo, new_rel)
    r = update(UpdateConfig(s.server.url, TOKEN, str(s.models)))
    assert r.status == "up-to-date" and r.roots_updated == 1
    assert json.loads((s.models / "trust/root.json").read_text())["signed"]["version"] == 2
    pub.publish(s.repo, s.bundle, new_rel)
    assert s.run(capsys)[0] == 0 and current_version(s.models) == 2
    pub.publish(s.repo, s.bundle, new_rel)
    s.resign(key=s.keys.release)  # the rotated-out release key is now an unknown key
    rc, _, err = s.run(capsys)
    one_line_exit_3(rc, err, "unknown key")


def test_a_full_disk_during_download_leaves_the_model_untouched(s, capsys, monkeypatch):
    from test_release_client import FullDisk

    import elma.update.updater as updater

    assert s.run(capsys)[0] == 0
    pub.publish(s.repo, s.bundle, s.keys.release)
    before = snapshot(s.models)
    client = ReleaseClient(s.server.url, TOKEN, open_file=FullDisk(300_000))
    with pytest.raises(DiskFullError, match="no space left"):
        update(UpdateConfig(s.server.url, TOKEN, str(s.models)), client=client)
    assert snapshot(s.models) == before and current_version(s.models) == 1
    monkeypatch.setattr(updater, "ReleaseClient", lambda *a: ReleaseClient(*a, open_file=FullDisk(100_000)))
    rc, _, err = s.run(capsys)  # the command line says so
    one_line_exit_3(rc, err, "no space left on the device")
    assert "release 1 stays installed (unchanged)" in err and snapshot(s.models) == before
    monkeypatch.undo()
    r = update(UpdateConfig(s.server.url, TOKEN, str(s.models)))  # space freed: resumes and completes
    assert r.status == "installed" and r.version == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_full_disk_tmpfs_says_so(s, capsys):
    mnt = s.tmp / "tmpfs"
    mnt.mkdir()
    size_kb = sum(p.stat().st_size for p in s.bundle.iterdir()) // 1024 * 3 // 2
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        shutil.move(str(s.models), str(mnt / "models"))
        s.models = mnt / "models"
        assert s.run(capsys)[0] == 0
        pub.publish(s.repo, s.bundle, s.keys.release)
        before = snapshot(s.models)
        rc, _, err = s.run(capsys)
        one_line_exit_3(rc, err, "MB are free")
        assert snapshot(s.models) == before and "release 1 stays installed" in err
        assert not (s.models / "staging" / "2").exists()
    finally:
        time.sleep(0.1)
        subprocess.run(["umount", str(mnt)])


def test_update_needs_a_root_of_trust_and_the_cli_reports_usage(tmp_path, s, capsys):
    (tmp_path / "t.token").write_text(TOKEN)
    capsys.readouterr()
    rc = elma_main(["update", "--server", s.server.url, "--token-file", str(tmp_path / "t.token"),
                    "--models-dir", str(tmp_path / "fresh")])
    assert rc == 3 and "no root of trust" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    assert elma_main(["update", "--rollback", "--models-dir", str(tmp_path / "fresh")]) == 3
    assert not (tmp_path / "fresh").exists()
    assert elma_main(["update", "--models-dir", str(tmp_path / "fresh")]) == 2
    root1 = str(s.repo / "root/1.root.json")
    assert elma_main(["update", "--trust-root", root1, "--models-dir", str(tmp_path / "fresh")]) == 0
    assert elma_main(["update", "--trust-root", root1, "--models-dir", str(tmp_path / "fresh")]) == 2
