"""Downloads from the release repository: bounded in size, resumable with HTTP Range requests.

    client = ReleaseClient("http://10.0.0.2:8000", token)
    data = client.get_bytes("release.json", max_bytes=MAX_RELEASE_BYTES)    # None when the server has no such file
    client.download("targets/7/weights.bin", Path("staging/7/weights.bin.part"), size_bytes=...)

Every read is bounded: metadata by a fixed limit, a release file by the size its signed metadata gives, so a
server (or a man in the middle) that sends endless data is cut off after one byte too many. A file download
continues a ``.part`` file from where it stopped (``Range: bytes=N-``; a server that ignores Range is read from
the start again). Paths are under ``/v1/releases/`` with the device's bearer token (``elma-serve --releases``).

Device side: Python 3.8, standard library only (urllib, as the offload client).
"""

import errno
import http.client
import logging
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable, Optional

from elma.errors import UpdateError

logger = logging.getLogger(__name__)

API_RELEASES = "/v1/releases/"
CHUNK_BYTES = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DiskFullError(UpdateError):
    """The device ran out of space while writing a download (the installed model is untouched)."""


class ReleaseClient:
    """GETs release files from ``server_url`` with ``token``; ``open_file`` (like ``open``) is injectable for tests.

    ``bytes_received`` counts the body bytes read over the network.
    """

    def __init__(self, server_url: str, token: str, timeout_s: float = 30.0, retries: int = 3,
                 open_file: Callable[..., IO[bytes]] = open):
        if not server_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https:// (got {server_url!r})")
        if not token or any(c.isspace() for c in token):
            raise ValueError("the device token is empty or holds white space; check the token file")
        self.base = server_url.rstrip("/") + API_RELEASES
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.open_file = open_file
        self.bytes_received = 0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:  # never log the token
        return f"ReleaseClient({self.base!r})"

    def _get(self, path: str, headers: Optional[dict] = None):
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}",
                                                                     **(headers or {})})
        return self._opener.open(request, timeout=self.timeout_s)

    def _http_error(self, path: str, err: urllib.error.HTTPError) -> UpdateError:
        if err.code == 401:
            return UpdateError(f"{self.base}{path}: HTTP 401: the server refused this device's token (check the token "
                               f"file against the server's tokens file)")
        return UpdateError(f"{self.base}{path}: HTTP {err.code} {err.reason}")

    def get_bytes(self, path: str, max_bytes: int) -> Optional[bytes]:
        """The whole file at ``path``, or None when the server says 404.

        Raises:
            UpdateError: unreachable server, another HTTP error, or more than ``max_bytes`` bytes.
        """
        try:
            with self._get(path) as response:
                data = response.read(max_bytes + 1)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise self._http_error(path, err) from err
        except (urllib.error.URLError, socket.timeout, OSError, http.client.HTTPException) as err:
            raise UpdateError(f"{self.base}{path}: server unreachable ({getattr(err, 'reason', err)})") from err
        self.bytes_received += len(data)
        if len(data) > max_bytes:
            raise UpdateError(f"{self.base}{path}: more than {max_bytes} bytes; refused (endless data)")
        return data

    def download(self, path: str, part: Path, size_bytes: int) -> None:
        """Make ``part`` hold exactly ``size_bytes`` bytes of ``path``, continuing what it already holds.

        Raises:
            DiskFullError: no space left while writing (``part`` keeps what was written).
            UpdateError: the server sends more than ``size_bytes`` (refused), or fails ``retries`` times in a row.
        """
        last: Optional[Exception] = None
        for attempt in range(self.retries + 1):
            try:
                self._download_once(path, part, size_bytes)
                return
            except DiskFullError:
                raise
            except _Retry as err:
                last = err.__cause__ or err
                logger.info("download of %s interrupted (%s); resuming (attempt %d)", path, last, attempt + 1)
        raise UpdateError(f"{self.base}{path}: download failed {self.retries + 1} times ({last}); run elma update "
                          f"again to resume") from last

    def _download_once(self, path: str, part: Path, size_bytes: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size_bytes:
            part.unlink()
            have = 0
        if have == size_bytes:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = self._get(path, headers)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing after ``have`` on the server: start over
                part.unlink()
                raise _Retry("416 range not satisfiable") from err
            if err.code >= 500:
                raise _Retry(f"HTTP {err.code}") from err
            raise self._http_error(path, err) from err
        except (urllib.error.URLError, socket.timeout, OSError, http.client.HTTPException) as err:
            raise _Retry(str(err)) from err
        with response:
            start = 0
            if response.status == 206:
                m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    raise UpdateError(f"{self.base}{path}: the server answered another range than bytes={have}- "
                                      f"({response.headers.get('Content-Range')!r})")
                start = have
            want = size_bytes - start
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > want:
                raise UpdateError(f"{self.base}{path}: {start + int(length)} bytes, larger than the {size_bytes} its "
                                  f"signed metadata says; refused")
            mode = "ab" if start else "wb"
            try:
                with self.open_file(part, mode) as f:
                    got = 0
                    while got <= want:
                        try:
                            chunk = response.read(min(CHUNK_BYTES, want + 1 - got))
                        except (socket.timeout, OSError, http.client.HTTPException) as err:
                            raise _Retry(str(err)) from err
                        if not chunk:
                            break
                        self.bytes_received += len(chunk)
                        if got + len(chunk) > want:
                            raise UpdateError(f"{self.base}{path}: more than the {size_bytes} bytes its signed metadata "
                                              f"says; refused (endless data)")
                        f.write(chunk)
                        got += len(chunk)
                    f.flush()
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(f"no space left on the device while downloading {path} ({err.strerror})") from err
                raise
        if got < want:
            raise _Retry(f"connection closed after {start + got} of {size_bytes} bytes")


class _Retry(Exception):
    """A transient failure: the download resumes from what ``part`` holds."""

