"""Signed update metadata: the root of trust and the release manifest, parsed and checked.

Two kinds of signed document (``elma.update.signing`` envelopes), after TUF's root and targets roles:

``N.root.json`` (``_type`` "elma-root"): the keys the device trusts and, per role, which of them sign and how
many must. Role ``root`` signs root metadata, role ``release`` signs releases. Version N+1 is accepted only
when signed by a threshold of version N's root keys *and* of its own (so a rotation needs the old and the
new root keys), and when its version is exactly N+1. The device walks the chain from the root it was
provisioned with, so every rotation is checked by a key it already trusted.

``release.json`` (``_type`` "elma-release"): one release of a model bundle::

    {"_type": "elma-release", "spec_version": 1, "version": 7,                     # versions only grow
     "created_unix_s": ..., "expires_unix_s": ...,                                # freeze: refused after expiry
     "min_elma_version": "0.1.0", "backbone": {"model_type", "config_sha256"},    # another backbone: refused
     "files": {"manifest.json": {"size_bytes", "sha256"}, ...},                   # every file of the bundle
     "scores": {...} | null,                                                      # finetune held-out scores
     "health": {"policy": "none", "checks": [{"question", "context", "text", "no_answer"}, ...]}}

Every file of the release is in one signed document, so files of two releases cannot be mixed; their sizes
bound what a device downloads (endless data). Parsing is strict: an unknown or missing field, a wrong type,
or a malformed envelope is refused, so that no flipped byte goes unnoticed.

Device side: Python 3.8, standard library only (plus ``signing``).
"""

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from elma.errors import UpdateError
from elma.update.signing import count_valid_signatures

SPEC_VERSION = 1
ROOT_TYPE, RELEASE_TYPE = "elma-root", "elma-release"
ROLES = ("root", "release")
MAX_ROOT_BYTES = 256 * 1024  # a root file larger than this is refused before it is parsed
MAX_RELEASE_BYTES = 4 * 1024 * 1024  # the release manifest (file list, scores, health passages)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")


def _strict_object(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key in {keys}")
    return dict(pairs)


def parse_envelope(data: bytes, what: str) -> Dict[str, Any]:
    """A signed envelope from bytes (UTF-8 JSON, no duplicate keys, exactly ``signed`` and ``signatures``)."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_strict_object,
                         parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not allowed")))
    except (UnicodeDecodeError, ValueError) as err:
        raise UpdateError(f"{what}: not valid signed metadata ({err}); the server's copy is damaged or tampered "
                          f"with") from err
    if not isinstance(obj, dict) or set(obj) != {"signed", "signatures"} or not isinstance(obj["signed"], dict) \
            or not isinstance(obj["signatures"], list):
        raise UpdateError(f"{what}: not a signed envelope ({{'signed', 'signatures'}} expected)")
    return obj


def _need(cond: bool, what: str, problem: str) -> None:
    if not cond:
        raise UpdateError(f"{what}: {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def version_tuple(text: str) -> Tuple[int, ...]:
    """"0.1.0" -> (0, 1, 0); raises ValueError for anything else."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise ValueError(f"not a version such as 0.1.0 (got {text!r})")
    return tuple(int(p) for p in text.split("."))


@dataclass(frozen=True)
class Role:
    keyids: Tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    """Verified root metadata."""

    version: int
    expires_unix_s: int
    keys: Mapping[str, Mapping[str, str]]  # key id -> {"keytype", "public_hex"}
    roles: Mapping[str, Role]
    envelope: Mapping[str, Any]  # as received, to store

    def signed_by(self, envelope: Mapping[str, Any], role: str) -> bool:
        r = self.roles[role]
        return count_valid_signatures(envelope, self.keys, r.keyids) >= r.threshold


def _root_fields(signed: Mapping[str, Any], what: str) -> Root:
    _need(set(signed) == {"_type", "spec_version", "version", "expires_unix_s", "keys", "roles"}, what,
          f"root metadata fields are {sorted(signed)}")
    _need(signed["_type"] == ROOT_TYPE and signed["spec_version"] == SPEC_VERSION, what,
          f"not ELMA root metadata of spec version {SPEC_VERSION}")
    _need(_is_int(signed["version"]) and signed["version"] >= 1 and _is_int(signed["expires_unix_s"]), what,
          "version or expiry is not a positive integer")
    keys = signed["keys"]
    _need(isinstance(keys, dict) and all(isinstance(k, str) and _HEX64.match(k) and isinstance(v, dict)
                                         and set(v) == {"keytype", "public_hex"} for k, v in keys.items()),
          what, "malformed key table")
    roles = signed["roles"]
    _need(isinstance(roles, dict) and set(roles) == set(ROLES), what, f"roles must be exactly {', '.join(ROLES)}")
    parsed = {}
    for name, r in roles.items():
        _need(isinstance(r, dict) and set(r) == {"keyids", "threshold"} and isinstance(r["keyids"], list)
              and _is_int(r["threshold"]) and 1 <= r["threshold"] <= len(set(r["keyids"]))
              and all(k in keys for k in r["keyids"]), what, f"role {name!r} is malformed or names unknown keys")
        parsed[name] = Role(tuple(r["keyids"]), r["threshold"])
    return Root(signed["version"], signed["expires_unix_s"], keys, parsed, {})


def load_trusted_root(data: bytes, what: str) -> Root:
    """The root the device already trusts (provisioned or verified earlier): self-signed by its root role."""
    env = parse_envelope(data, what)
    root = _root_fields(env["signed"], what)
    root = Root(root.version, root.expires_unix_s, root.keys, root.roles, env)
    _need(root.signed_by(env, "root"), what, "not signed by a threshold of its own root keys")
    return root


def next_root(trusted: Root, data: bytes, what: str) -> Root:
    """Verify root version ``trusted.version + 1`` against ``trusted`` (TUF's rotation rule).

    Raises:
        UpdateError: not signed by a threshold of the old root keys and of its own, or not the next version.
    """
    env = parse_envelope(data, what)
    new = _root_fields(env["signed"], what)
    new = Root(new.version, new.expires_unix_s, new.keys, new.roles, env)
    _need(trusted.signed_by(env, "root"), what, f"not signed by a threshold of the trusted root keys (version "
          f"{trusted.version}): an unknown key; refused")
    _need(new.signed_by(env, "root"), what, "not signed by a threshold of its own root keys; refused")
    _need(new.version == trusted.version + 1, what, f"version {new.version}, expected {trusted.version + 1}")
    return new


@dataclass(frozen=True)
class Release:
    """A verified release manifest."""

    version: int
    created_unix_s: int
    expires_unix_s: int
    min_elma_version: str
    backbone: Mapping[str, str]  # {"model_type", "config_sha256"}, as in the bundle manifest
    files: Mapping[str, Mapping[str, Any]]  # name -> {"size_bytes", "sha256"}
    scores: Optional[Mapping[str, Any]]
    health: Mapping[str, Any]  # {"policy", "checks": [...]}
    envelope: Mapping[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size_bytes"]) for f in self.files.values())


RELEASE_FIELDS = {"_type", "spec_version", "version", "created_unix_s", "expires_unix_s", "min_elma_version",
                  "backbone", "files", "scores", "health"}


def check_release_fields(signed: Mapping[str, Any], what: str) -> None:
    """Refuse release metadata with a missing, unknown or ill-typed field."""
    _need(set(signed) == RELEASE_FIELDS, what, f"release fields are {sorted(signed)}, expected {sorted(RELEASE_FIELDS)}")
    _need(signed["_type"] == RELEASE_TYPE and signed["spec_version"] == SPEC_VERSION, what,
          f"not an ELMA release of spec version {SPEC_VERSION}")
    _need(all(_is_int(signed[k]) and signed[k] >= 0 for k in ("version", "created_unix_s", "expires_unix_s"))
          and signed["version"] >= 1, what, "version, created_unix_s or expires_unix_s is not a positive integer")
    try:
        version_tuple(signed["min_elma_version"])
    except ValueError as err:
        raise UpdateError(f"{what}: min_elma_version: {err}") from err
    b = signed["backbone"]
    _need(isinstance(b, dict) and set(b) == {"model_type", "config_sha256"} and isinstance(b["model_type"], str)
          and isinstance(b["config_sha256"], str), what, "malformed backbone")
    files = signed["files"]
    _need(isinstance(files, dict) and "manifest.json" in files, what, "no file table, or no manifest.json in it")
    for name, rec in files.items():
        _need(bool(_FILE_NAME.match(name)) and name not in (".", ".."), what, f"file name {name!r} is not a plain name")
        _need(isinstance(rec, dict) and set(rec) == {"size_bytes", "sha256"} and _is_int(rec["size_bytes"])
              and rec["size_bytes"] >= 0 and isinstance(rec["sha256"], str) and bool(_HEX64.match(rec["sha256"])),
              what, f"entry of {name} is malformed")
    _need(signed["scores"] is None or isinstance(signed["scores"], dict), what, "scores must be an object or null")
    h = signed["health"]
    _need(isinstance(h, dict) and set(h) == {"policy", "checks"} and isinstance(h["policy"], str)
          and isinstance(h["checks"], list) and all(
              isinstance(c, dict) and set(c) == {"question", "context", "text", "no_answer"}
              and isinstance(c["question"], str) and isinstance(c["context"], str) and isinstance(c["text"], str)
              and isinstance(c["no_answer"], bool) for c in h["checks"]), what, "malformed health checks")


def verify_release(root: Root, data: bytes, what: str) -> Release:
    """Parse ``release.json`` and check its signatures against the root's release role.

    Raises:
        UpdateError: malformed, or not signed by a threshold of the release keys (an unknown key).
    """
    env = parse_envelope(data, what)
    signed = env["signed"]
    check_release_fields(signed, what)
    _need(root.signed_by(env, "release"), what, f"not signed by a threshold of the release keys of root version "
          f"{root.version} (an unknown key or a damaged signature); refused")
    return Release(signed["version"], signed["created_unix_s"], signed["expires_unix_s"], signed["min_elma_version"],
                   signed["backbone"], signed["files"], signed["scores"], signed["health"], env)


def check_not_expired(expires_unix_s: int, what: str, now_s: Optional[float] = None) -> None:
    """Refuse metadata past its expiry (a server that was frozen, or a publisher that stopped re-signing)."""
    now_s = time.time() if now_s is None else now_s
    if now_s >= expires_unix_s:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_unix_s))
        raise UpdateError(f"{what}: expired on {when}; the server offers stale metadata (the publisher must "
                          f"re-sign it: `elma publish --refresh`)")


def dump_envelope(envelope: Mapping[str, Any]) -> bytes:
    """How envelopes are written to files: indented JSON, UTF-8 (verification uses the canonical form)."""
    return (json.dumps(envelope, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
