"""Device tokens: the server keeps only each token's sha256, one device per line of the tokens file."""

import hashlib
import re
import secrets
from pathlib import Path
from typing import Dict

from elma.errors import OffloadError

TOKEN_PREFIX = "sha256:"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def hash_token(token: str) -> str:
    """``sha256:HEX`` of a token. Tokens are 256-bit random strings (``new_token``), so a fast hash is enough:
    there is nothing to brute-force that a slow KDF would protect (unlike passwords)."""
    return TOKEN_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_tokens(path: Path) -> Dict[str, str]:
    """Read a tokens file: ``{sha256 digest line: device id}``.

    Format: one device per line, ``DEVICE_ID sha256:HEX`` (64 hex digits); ``#`` starts a comment; blank lines
    are ignored. Device ids are 1-128 characters of letters, digits, ``.``, ``_``, ``-``. Make a line with
    ``elma-serve --tokens FILE --add-device ID`` (prints the token once) or
    ``printf %s "$TOKEN" | sha256sum``.

    Raises:
        OffloadError: missing file, malformed line, duplicate device or token, or no device at all.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise OffloadError(f"{path}: cannot read the tokens file ({err.strerror or err}); create it with "
                           f"`elma-serve --tokens {path} --add-device DEVICE_ID`") from err
    tokens: Dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if (len(parts) != 2 or not DEVICE_ID.match(parts[0]) or not parts[1].startswith(TOKEN_PREFIX)
                or not re.fullmatch(r"[0-9a-f]{64}", parts[1][len(TOKEN_PREFIX):])):
            raise OffloadError(f"{path}:{n}: expected 'DEVICE_ID sha256:<64 lower-case hex digits>'")
        device, digest = parts
        if digest in tokens or device in tokens.values():
            raise OffloadError(f"{path}:{n}: device {device!r} or its token is listed twice")
        tokens[digest] = device
    if not tokens:
        raise OffloadError(f"{path}: no devices; add one with `elma-serve --tokens {path} --add-device DEVICE_ID`")
    return tokens


def add_device(path: Path, device_id: str) -> str:
    """Append a new device to the tokens file (created with mode 0600); returns its token (shown once)."""
    if not DEVICE_ID.match(device_id):
        raise ValueError(f"device id must be 1-128 letters, digits, '.', '_' or '-' (got {device_id!r})")
    path = Path(path)
    if path.exists() and device_id in load_tokens(path).values():
        raise OffloadError(f"{path}: device {device_id!r} already has a token; remove its line to replace it")
    token = new_token()
    path.touch(mode=0o600, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{device_id} {hash_token(token)}\n")
    return token
