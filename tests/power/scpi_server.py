"""A tiny fake Keysight E36311A on 127.0.0.1 for tests: newline-terminated SCPI over a raw socket (port 5025 style).

Answers ``*IDN?``, ``MEAS:VOLT? (@1[,2[,3]])``, ``MEAS:CURR? (@...)``; ignores other commands. Tests steer it:
``stall_queries`` (swallow that many MEAS queries, so the client times out) and ``drop_clients()`` (close every
connection, as a pulled cable or a supply power-cycle would).
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Dict, List, Optional

IDN = "Keysight Technologies,E36311A,MY00000000,fake-loopback"
_MEAS_RE = re.compile(r"^MEAS(?:ure)?:(VOLT|CURR)\? \(@([0-9,]+)\)$", re.IGNORECASE)


class FakeE36311A:
    def __init__(self, volts_v: Optional[Dict[int, float]] = None, amps_a: Optional[Dict[int, float]] = None, idn: str = IDN):
        self.volts_v = dict(volts_v or {1: 5.0, 2: 12.0, 3: -5.0})
        self.amps_a = dict(amps_a or {1: 1.0, 2: 0.25, 3: -0.1})
        self.idn = idn
        self.stall_queries = 0
        self.queries: List[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._clients: List[socket.socket] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="fake-e36311a", daemon=True)

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.port}::SOCKET"

    def start(self) -> "FakeE36311A":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.drop_clients()
        self._sock.close()

    def drop_clients(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _answer(self, command: str) -> Optional[str]:
        if command.upper() == "*IDN?":
            return self.idn
        match = _MEAS_RE.match(command)
        if not match:
            return None
        with self._lock:
            if self.stall_queries > 0:
                self.stall_queries -= 1
                return None
        table = self.volts_v if match.group(1).upper() == "VOLT" else self.amps_a
        return ",".join(f"{table[int(ch)]:+.5E}" for ch in match.group(2).split(","))

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        client.settimeout(0.05)
        while not self._stop.is_set():
            try:
                chunk = client.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = line.decode("ascii", errors="replace").strip()
                with self._lock:
                    self.queries.append(command)
                answer = self._answer(command)
                if answer is not None:
                    try:
                        client.sendall(answer.encode("ascii") + b"\n")
                    except OSError:
                        return
