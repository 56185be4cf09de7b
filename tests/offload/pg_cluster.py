"""A throwaway PostgreSQL cluster on a loopback port, for the record-store tests and the offload fault runs.

Binaries, first found: ``$ELMA_PG_BIN``; the PostgreSQL that the PyPI package ``pgserver`` ships (in the ``dev`` extra,
so CI has it); ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql``). PostgreSQL refuses to run as root, so as root
the server runs as ``nobody`` (runuser).
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def find_pg_bin() -> Optional[Path]:
    candidates = []
    if os.environ.get("ELMA_PG_BIN"):
        candidates.append(Path(os.environ["ELMA_PG_BIN"]))
    try:
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


class PgUnavailable(Exception):
    """PostgreSQL cannot run here; the message says why."""


class PgCluster:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; ``url`` for SQLAlchemy; ``restart()``; ``stop()`` removes it."""

    user = "nobody"

    def __init__(self):
        self.bin = find_pg_bin()
        if self.bin is None:
            raise PgUnavailable("no PostgreSQL binaries (pip install pgserver, apt install postgresql, or set ELMA_PG_BIN)")
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PgUnavailable("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
            try:
                pwd.getpwnam(self.user)
            except KeyError as err:
                raise PgUnavailable("running as root and there is no 'nobody' user to run PostgreSQL as") from err
            # nobody must reach the binaries (pgserver's live in the venv, maybe under /root)
            if subprocess.run(["runuser", "-u", self.user, "--", str(self.bin / "initdb"), "--version"],
                              capture_output=True).returncode != 0:
                raise PgUnavailable(f"user {self.user} cannot run {self.bin / 'initdb'}")
        self.root = Path(tempfile.mkdtemp(prefix="elma-pg-"))  # under /tmp: the unprivileged user can reach it
        if os.geteuid() == 0:
            shutil.chown(self.root, user=self.user)
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        proc = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "elma", "-E", "UTF8", "--no-sync")
        if proc.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise PgUnavailable(f"initdb failed: {proc.stderr.strip()[-300:]}")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://elma@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str):
        argv = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        proc = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60", "start")
        if proc.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            self.stop()
            raise PgUnavailable(f"PostgreSQL did not start: {(proc.stderr + log).strip()[-300:]}")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: roll back open transactions; ``immediate``: like a crash) and start again on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.start()

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
