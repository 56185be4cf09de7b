"""Ed25519 keys and signed envelopes (PyNaCl, i.e. libsodium).

    key = generate_key(Path("release.key"))             # private key file, mode 0600; returns its public key
    envelope = sign({"_type": "elma-release", ...}, [load_private_key(Path("release.key"))])
    count = count_valid_signatures(envelope, trusted={keyid: public_hex}, allowed=role_keyids)

An envelope is ``{"signed": {...}, "signatures": [{"keyid": HEX, "sig_hex": HEX}, ...]}``, as TUF's
metadata. What is signed is the canonical JSON of ``signed`` (sorted keys, no white space, ASCII only, no
NaN), so a file may be pretty-printed and still verify. A key id is the sha256 of the raw 32-byte public key.
Signatures from unknown keys, by keys outside the role, malformed or invalid ones are not counted (TUF does
the same); the caller compares the count with the role's threshold.

Private key files hold ``ed25519-private:HEX`` (the 32-byte seed) on one line, written with mode 0600; they are
read only by the publishing machine (``elma keys``, ``elma publish``) and never copied into a repository.

Device side: Python 3.8; PyNaCl is imported when a key is used (the ``update`` extra).
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

from elma.errors import OutputExistsError, UpdateError

PRIVATE_PREFIX = "ed25519-private:"
KEYTYPE = "ed25519"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError as err:
        raise UpdateError(f"signed updates need PyNaCl: pip install 'elma[update]' ({err})") from err
    return nacl


def canonical_bytes(obj: Any) -> bytes:
    """The bytes that are signed: JSON with sorted keys, no white space, ASCII only; NaN and infinities refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def key_id(public_hex: str) -> str:
    """sha256 (hex) of the raw public key."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()


@dataclass(frozen=True)
class PrivateKey:
    """An Ed25519 signing key (the seed) and its public half."""

    seed_hex: str  # 32 bytes, hex
    public_hex: str  # 32 bytes, hex

    @property
    def keyid(self) -> str:
        return key_id(self.public_hex)

    def __repr__(self) -> str:  # never log the seed
        return f"PrivateKey(keyid={self.keyid[:16]}...)"

    def sign(self, message: bytes) -> str:
        nacl = _nacl()
        return nacl.signing.SigningKey(bytes.fromhex(self.seed_hex)).sign(message).signature.hex()


def _from_seed(seed: bytes) -> PrivateKey:
    nacl = _nacl()
    public = nacl.signing.SigningKey(seed).verify_key.encode().hex()
    return PrivateKey(seed.hex(), public)


def generate_key(path: Path, overwrite: bool = False) -> PrivateKey:
    """Write a new private key file (mode 0600, created exclusively) and return the key.

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is False (a key is never replaced unasked).
    """
    path = Path(path)
    key = _from_seed(os.urandom(32))
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; a key is never replaced unasked (choose another path)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(PRIVATE_PREFIX + key.seed_hex + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(str(tmp), str(path))
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return key


def load_private_key(path: Path) -> PrivateKey:
    """Read a private key file written by ``generate_key``.

    Raises:
        UpdateError: missing, unreadable or malformed file.
    """
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UpdateError(f"{path}: cannot read the private key ({err}); make one with `elma keys generate {path}`") from err
    if not text.startswith(PRIVATE_PREFIX) or not _HEX64.match(text[len(PRIVATE_PREFIX):]):
        raise UpdateError(f"{path}: not an ELMA private key (expected '{PRIVATE_PREFIX}<64 hex digits>')")
    return _from_seed(bytes.fromhex(text[len(PRIVATE_PREFIX):]))


def public_entry(key: PrivateKey) -> Dict[str, str]:
    """The public key as root metadata lists it."""
    return {"keytype": KEYTYPE, "public_hex": key.public_hex}


def sign(signed: Mapping[str, Any], keys: Iterable[PrivateKey]) -> Dict[str, Any]:
    """An envelope of ``signed`` with one signature per key."""
    message = canonical_bytes(signed)
    return {"signed": dict(signed), "signatures": [{"keyid": k.keyid, "sig_hex": k.sign(message)} for k in keys]}


def verify_one(public_hex: str, message: bytes, sig_hex: str) -> bool:
    """Is ``sig_hex`` a valid Ed25519 signature of ``message`` by ``public_hex``?"""
    if not _HEX64.match(public_hex) or not isinstance(sig_hex, str) or not _HEX128.match(sig_hex):
        return False
    nacl = _nacl()
    try:
        nacl.signing.VerifyKey(bytes.fromhex(public_hex)).verify(message, bytes.fromhex(sig_hex))
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def count_valid_signatures(envelope: Mapping[str, Any], keys: Mapping[str, Mapping[str, Any]],
                           allowed: Iterable[str]) -> int:
    """How many distinct keys of ``allowed`` (key ids, all present in ``keys``) validly signed ``envelope``.

    ``keys`` maps key id -> ``{"keytype": "ed25519", "public_hex": HEX}``. A key id that is not the sha256 of its
    public key is ignored, so a key cannot pose under another id.
    """
    message = canonical_bytes(envelope["signed"])
    allowed_set = set(allowed)
    good: List[str] = []
    for sig in envelope.get("signatures", []):
        if not isinstance(sig, dict) or set(sig) != {"keyid", "sig_hex"}:
            continue
        kid = sig["keyid"]
        entry = keys.get(kid) if isinstance(kid, str) else None
        if kid in good or kid not in allowed_set or not isinstance(entry, Mapping):
            continue
        public = entry.get("public_hex")
        if entry.get("keytype") != KEYTYPE or not isinstance(public, str) or not _HEX64.match(public):
            continue
        if key_id(public) == kid and verify_one(public, message, sig["sig_hex"]):
            good.append(kid)
    return len(good)
