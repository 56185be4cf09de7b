"""Release downloads against a loopback HTTP server that can honour or ignore Range, drop connections, or send
too much: sizes are bounded, downloads resume, a full disk is reported as such."""

import errno
import http.server
import re
import threading

import pytest

from elma.errors import UpdateError
from elma.update.client import DiskFullError, ReleaseClient

DATA = bytes(range(256)) * 1200  # 307200 bytes


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    behaviour = {}
    seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        b = self.behaviour
        Handler.seen.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer tok":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.path.startswith("/v1/releases/f"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b.get("body", DATA)
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and b.get("range", True) else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if not b.get("hide_length"):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        drop = b.pop("drop_after", None)
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    Handler.behaviour, Handler.seen = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()


def test_get_bytes_is_bounded_and_404_is_none(server):
    url, h = server
    c = ReleaseClient(url, "tok")
    assert c.get_bytes("f", len(DATA)) == DATA and c.bytes_received == len(DATA)
    assert c.get_bytes("missing", 10) is None
    with pytest.raises(UpdateError, match="endless data"):
        c.get_bytes("f", len(DATA) - 1)
    with pytest.raises(UpdateError, match="refused this device's token"):
        ReleaseClient(url, "wrong").get_bytes("f", 10)


def test_a_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    url, h = server
    part = tmp_path / "w.part"
    part.write_bytes(DATA[:100_000])
    c = ReleaseClient(url, "tok")
    c.download("f", part, len(DATA))
    assert part.read_bytes() == DATA
    assert h.seen[-1][1] == "bytes=100000-" and c.bytes_received == len(DATA) - 100_000


def test_a_server_ignoring_range_is_read_from_the_start(server, tmp_path):
    url, h = server
    h.behaviour["range"] = False
    part = tmp_path / "w.part"
    part.write_bytes(b"\0" * 5000)  # wrong bytes: overwritten, not appended to
    ReleaseClient(url, "tok").download("f", part, len(DATA))
    assert part.read_bytes() == DATA


def test_a_dropped_connection_resumes_where_it_stopped(server, tmp_path):
    url, h = server
    h.behaviour["drop_after"] = 70_000
    part = tmp_path / "w.part"
    c = ReleaseClient(url, "tok")
    c.download("f", part, len(DATA))
    assert part.read_bytes() == DATA
    ranges = [r for _, r, _ in h.seen]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) >= 65536 // 2
    assert c.bytes_received == len(DATA)  # nothing fetched twice


@pytest.mark.parametrize("hide_length", [False, True])
def test_more_data_than_signed_is_refused_without_writing_past_the_size(server, tmp_path, hide_length):
    url, h = server
    h.behaviour.update(body=DATA + b"x" * 1_000_000, hide_length=hide_length)
    part = tmp_path / "w.part"
    c = ReleaseClient(url, "tok")
    with pytest.raises(UpdateError, match="larger than|endless data"):
        c.download("f", part, len(DATA))
    assert not part.exists() or part.stat().st_size <= len(DATA)
    assert c.bytes_received <= len(DATA) + 1  # cut off after one byte too many


class FullDisk:
    """Like open(): a file that raises ENOSPC once ``limit`` bytes have been written to it."""

    def __init__(self, limit):
        self.limit = limit

    def __call__(self, path, mode):
        f = open(path, mode)
        limit, written = self.limit, [f.tell()]

        class W:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, b):
                if written[0] + len(b) > limit:
                    f.write(b[:max(0, limit - written[0])])
                    written[0] = limit
                    raise OSError(errno.ENOSPC, "No space left on device")
                written[0] += len(b)
                return f.write(b)

            def flush(self):
                f.flush()
        return W()


def test_a_full_disk_is_reported_and_what_was_written_is_kept_for_later(server, tmp_path):
    url, h = server
    part = tmp_path / "w.part"
    with pytest.raises(DiskFullError, match="no space left"):
        ReleaseClient(url, "tok", open_file=FullDisk(123_456)).download("f", part, len(DATA))
    assert part.read_bytes() == DATA[:123_456]
    ReleaseClient(url, "tok").download("f", part, len(DATA))  # space freed: it resumes
    assert part.read_bytes() == DATA
