"""Root chain (key rotation) and release manifests: strict parsing, signatures, expiry; every flipped byte refused."""

import json
import time

import pytest

pytest.importorskip("nacl")

from elma.errors import UpdateError  # noqa: E402
from elma.update.metadata import (  # noqa: E402
    RELEASE_TYPE,
    SPEC_VERSION,
    check_not_expired,
    dump_envelope,
    load_trusted_root,
    next_root,
    verify_release,
)
from elma.update.publish import _root_signed  # noqa: E402
from elma.update.signing import generate_key, sign  # noqa: E402


@pytest.fixture
def k(tmp_path):
    return {n: generate_key(tmp_path / f"{n}.key") for n in ("root", "rel", "root2", "rel2", "evil")}


def root_bytes(version, root_keys, release_keys, signers):
    return dump_envelope(sign(_root_signed(version, root_keys, release_keys, 365), signers))


def release_signed(version=2, expires_in_s=3600):
    now = int(time.time())
    return {"_type": RELEASE_TYPE, "spec_version": SPEC_VERSION, "version": version, "created_unix_s": now,
            "expires_unix_s": now + expires_in_s, "min_elma_version": "0.1.0",
            "backbone": {"model_type": "bert", "config_sha256": "ab" * 32},
            "files": {"manifest.json": {"size_bytes": 10, "sha256": "cd" * 32},
                      "weights.bin": {"size_bytes": 99, "sha256": "ef" * 32}},
            "scores": {"new_f1": 55.4}, "health": {"policy": "none", "checks": [
                {"question": "Who?", "context": "Rollo led.", "text": "Rollo", "no_answer": False}]}}


def test_rotation_needs_the_old_and_the_new_root_keys(k):
    r1 = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    good = root_bytes(2, [k["root2"]], [k["rel2"]], [k["root"], k["root2"]])
    r2 = next_root(r1, good, "r2")
    assert r2.version == 2 and r2.roles["release"].keyids == (k["rel2"].keyid,)
    with pytest.raises(UpdateError, match="trusted root keys"):  # the new key alone: an unknown key
        next_root(r1, root_bytes(2, [k["root2"]], [k["rel2"]], [k["root2"]]), "r2")
    with pytest.raises(UpdateError, match="its own root keys"):  # the old key alone
        next_root(r1, root_bytes(2, [k["root2"]], [k["rel2"]], [k["root"]]), "r2")
    with pytest.raises(UpdateError, match="expected 2"):  # a skipped version
        next_root(r1, root_bytes(3, [k["root"]], [k["rel"]], [k["root"]]), "r3")


def test_release_signed_by_the_release_role_only(k):
    root = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    rel = verify_release(root, dump_envelope(sign(release_signed(), [k["rel"]])), "rel")
    assert rel.version == 2 and rel.total_bytes == 109
    for signer in ("evil", "root"):  # an unknown key; a key of another role
        with pytest.raises(UpdateError, match="unknown key"):
            verify_release(root, dump_envelope(sign(release_signed(), [k[signer]])), "rel")


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("scores"), "release fields"),
    (lambda s: s.update(extra=1), "release fields"),
    (lambda s: s.update(version=True), "positive integer"),
    (lambda s: s["files"].update({"../x": {"size_bytes": 1, "sha256": "ab" * 32}}), "plain name"),
    (lambda s: s["files"]["weights.bin"].update(size_bytes=-1), "malformed"),
    (lambda s: s.update(min_elma_version="latest"), "min_elma_version"),
])
def test_malformed_release_fields_are_refused_even_when_signed(k, change, match):
    root = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    signed = release_signed()
    change(signed)
    with pytest.raises(UpdateError, match=match):
        verify_release(root, dump_envelope(sign(signed, [k["rel"]])), "rel")


def test_duplicate_keys_and_nan_are_refused(k):
    root = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    data = dump_envelope(sign(release_signed(), [k["rel"]])).decode()
    with pytest.raises(UpdateError, match="duplicate"):
        verify_release(root, data.replace('"signed": {', '"signed": {"version": 99, ', 1).encode(), "rel")
    with pytest.raises(UpdateError, match="not valid"):
        verify_release(root, data.replace('"new_f1": 55.4', '"new_f1": NaN').encode(), "rel")


def test_expiry(k):
    check_not_expired(int(time.time()) + 60, "x")
    with pytest.raises(UpdateError, match="expired on"):
        check_not_expired(int(time.time()) + 60, "x", now_s=time.time() + 61)


def flips(data: bytes):
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            yield i, data[:i] + bytes([data[i] ^ mask]) + data[i + 1:]


def test_every_flipped_byte_of_release_metadata_is_refused(k):
    root = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    data = dump_envelope(sign(release_signed(), [k["rel"]]))
    verify_release(root, data, "rel")
    accepted = []
    for i, bad in flips(data):
        try:
            verify_release(root, bad, "rel")
            accepted.append(i)
        except UpdateError:
            pass
    assert not accepted, f"flips accepted at bytes {accepted[:10]} of {len(data)}"


def test_every_flipped_byte_of_root_metadata_is_refused(k):
    r1 = load_trusted_root(root_bytes(1, [k["root"]], [k["rel"]], [k["root"]]), "r1")
    data = root_bytes(2, [k["root2"]], [k["rel2"]], [k["root"], k["root2"]])
    next_root(r1, data, "r2")
    accepted = []
    for i, bad in flips(data):
        try:
            next_root(r1, bad, "r2")
            accepted.append(i)
        except UpdateError:
            pass
    assert not accepted, f"flips accepted at bytes {accepted[:10]} of {len(data)}"
    json.loads(data)  # the original still parses: the loop flipped copies only
