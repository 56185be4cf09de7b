"""Ed25519 keys and envelopes: a signature counts only for the right key, message and role."""

import os
import stat

import pytest

pytest.importorskip("nacl")

from elma.errors import OutputExistsError, UpdateError  # noqa: E402
from elma.update.signing import count_valid_signatures, generate_key, key_id, load_private_key, public_entry, sign  # noqa: E402


@pytest.fixture
def keys(tmp_path):
    return generate_key(tmp_path / "a.key"), generate_key(tmp_path / "b.key")


def test_key_file_is_private_round_trips_and_is_never_replaced_unasked(tmp_path, keys):
    a, _ = keys
    path = tmp_path / "a.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_private_key(path)
    assert again.public_hex == a.public_hex and again.keyid == key_id(a.public_hex) and a.seed_hex not in repr(a)
    with pytest.raises(OutputExistsError):
        generate_key(path)
    assert load_private_key(path).public_hex == a.public_hex
    (tmp_path / "bad.key").write_text("ed25519-private:xyz\n")
    with pytest.raises(UpdateError, match="not an ELMA private key"):
        load_private_key(tmp_path / "bad.key")


def test_signatures_count_only_for_known_allowed_keys_over_the_same_content(keys):
    a, b = keys
    table = {a.keyid: public_entry(a), b.keyid: public_entry(b)}
    env = sign({"version": 3, "x": "y"}, [a, b])
    assert count_valid_signatures(env, table, [a.keyid, b.keyid]) == 2
    assert count_valid_signatures(env, table, [a.keyid]) == 1  # b is not in the role
    assert count_valid_signatures(env, {a.keyid: public_entry(a)}, [a.keyid, b.keyid]) == 1  # b unknown
    env["signed"]["version"] = 4
    assert count_valid_signatures(env, table, [a.keyid, b.keyid]) == 0
    dup = sign({"v": 1}, [a])
    dup["signatures"] *= 2  # one key signing twice counts once
    assert count_valid_signatures(dup, table, [a.keyid]) == 1


def test_a_key_cannot_pose_under_another_id(keys):
    a, b = keys
    env = sign({"v": 1}, [b])
    env["signatures"][0]["keyid"] = a.keyid  # b's signature under a's id, with b's public key listed for a
    assert count_valid_signatures(env, {a.keyid: public_entry(b)}, [a.keyid]) == 0
