"""The device's models folder: atomic switch, previous kept, rollback marks bad, state survives, one updater at a time."""

import os

import pytest

from elma.errors import OutputExistsError, UpdateError
from elma.update.store import ModelStore, UpdateState


def stage(store, version, content):
    d = store.staging_dir(version)
    (d / "weights.bin").write_bytes(content)
    return store.commit_staged(version)


def test_switch_keeps_the_previous_and_removes_older(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.current_version() is None
    for v in (1, 2, 3):
        stage(store, v, f"v{v}".encode())
        store.switch_to(v)
    assert store.current_version() == 3 and store.previous_version() == 2 and store.installed_versions() == [2, 3]
    assert os.readlink(tmp_path / "models" / "current") == "releases/3"  # relative: the folder may move
    assert (tmp_path / "models" / "current" / "weights.bin").read_bytes() == b"v3"
    assert not (tmp_path / "models" / "staging" / "3").exists()
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]


def test_staging_other_versions_is_cleared(tmp_path):
    store = ModelStore(tmp_path)
    (store.staging_dir(4) / "a.part").write_bytes(b"x")
    store.staging_dir(5)
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["5"]


def test_rollback_marks_the_current_bad_and_needs_a_previous(tmp_path):
    store = ModelStore(tmp_path)
    stage(store, 1, b"one")
    store.switch_to(1)
    with pytest.raises(UpdateError, match="no previous release"):
        store.rollback()
    stage(store, 2, b"two")
    store.switch_to(2)
    assert store.rollback() == 1
    assert store.current_version() == 1 and store.previous_version() is None and store.installed_versions() == [1]
    assert 2 in store.load_state().bad


def test_state_round_trip_and_a_damaged_state_is_not_reset_silently(tmp_path):
    store = ModelStore(tmp_path)
    assert store.load_state() == UpdateState()
    store.save_state(UpdateState(7, {5: "health check failed"}))
    assert store.load_state() == UpdateState(7, {5: "health check failed"})
    (tmp_path / "state.json").write_text("{garbage")
    with pytest.raises(UpdateError, match="not reset silently"):
        store.load_state()


def test_a_foreign_current_is_refused(tmp_path):
    (tmp_path / "current").mkdir()
    with pytest.raises(UpdateError, match="not a symlink"):
        ModelStore(tmp_path).current_version()
    os.rmdir(tmp_path / "current")
    os.symlink("/etc", tmp_path / "current")
    with pytest.raises(UpdateError, match="not to releases"):
        ModelStore(tmp_path).current_version()


def test_one_updater_at_a_time(tmp_path):
    store = ModelStore(tmp_path)
    with store.lock():
        with pytest.raises(UpdateError, match="another elma update"):
            with ModelStore(tmp_path).lock():
                pass
    with store.lock():  # released
        pass


def test_trust_root_is_not_replaced_unasked(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(UpdateError, match="no root of trust"):
        store.trusted_root()
    store.save_root(b"one", overwrite=False)
    with pytest.raises(OutputExistsError):
        store.save_root(b"two", overwrite=False)
    assert store.trusted_root() == b"one"
