"""sha256 of a large file, remembered by its stat (as git's index does), so a model is not re-hashed per call.

Hashing the shipped model's 45 MB of weights costs about 0.1 s on a small CPU; ``elma-ask`` needs the hash on
every call (it names the cached bundle and checks that a calibrated default policy belongs to these weights).
The memo is one small JSON file per hashed path under ``cache_dir()/hashes``, keyed by the resolved path and
valid while the file's size, mtime (ns), inode and device are unchanged. A memo that cannot be read or written
(read-only home, a full disk) only costs the hash. Standard library only (device side, Python 3.8).
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

from elma.fsutil import write_json
from elma.runtime.bundle import sha256_file

logger = logging.getLogger(__name__)



# the bundle checker's hash: one definition of a file's sha256
sha256_of = sha256_file


def sha256_memo(path: "str | os.PathLike", memo_dir: Optional[Path] = None) -> str:
    """Hex sha256 of ``path``, from the memo when the file's stat is what it was when last hashed.

    Args:
        path: the file.
        memo_dir: where memos live (default ``elma.paths.cache_dir() / "hashes"``).

    Raises:
        OSError: the file cannot be read.
    """
    from elma.paths import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}
    memo = (memo_dir or cache_dir() / "hashes") / (hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:32] + ".json")
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()) and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    value = sha256_of(path)
    if os.stat(path).st_mtime_ns == st.st_mtime_ns:  # not rewritten while hashing: the memo may be trusted
        try:
            write_json(memo, {**stamp, "sha256": value})
        except OSError as err:
            logger.debug("cannot remember the hash of %s in %s: %s", path, memo, err)
    return value
