"""A real PostgreSQL for the several-servers tests, on a free loopback port.

Redis comes from pytest-redis (its ``redis_proc`` fixture), nginx from ``bench/nginx.py``.
PostgreSQL is started here rather than with pytest-postgresql because these machines and CI
run the tests as root, which PostgreSQL refuses: as root the cluster runs as Debian's
``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port, poll


def postgres_bindir() -> Path | None:
    """Debian installs the server programs under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throwaway cluster with a database ``maskwatch`` that user ``maskwatch`` may use
    without a password (trust on loopback: a test cluster, gone when the test ends)."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
        self.port = free_port()
        # Not under pytest's temporary folder: as root that folder is closed to other users.
        self.base = base = Path(tempfile.mkdtemp(prefix="maskwatch-postgres-"))
        self.datadir, self.sockets = base / "data", base / "sockets"
        self.sockets.mkdir(parents=True)
        # Run as postgres when we are root (Popen switches user itself: signals reach the server).
        self.as_user = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
        if self.as_user:
            shutil.chown(base, "postgres")
            shutil.chown(self.sockets, "postgres")
        subprocess.run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "maskwatch",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120, cwd=base, **self.as_user)
        self.proc: subprocess.Popen | None = None
        self.url = f"postgresql://maskwatch@127.0.0.1:{self.port}/maskwatch"

    def start(self) -> "PostgresServer":
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
             "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.base, **self.as_user)
        if not poll(self._accepts, bool, timeout=30, every=0.2):
            raise TimeoutError("PostgreSQL did not start")
        return self

    def _accepts(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(f"host=127.0.0.1 port={self.port} user=maskwatch dbname=postgres",
                                 autocommit=True, connect_timeout=2) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'maskwatch'").fetchone():
                    conn.execute("CREATE DATABASE maskwatch")
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its URL (the cluster user may use it)."""
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=maskwatch dbname=postgres",
                             autocommit=True, connect_timeout=2) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://maskwatch@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: open sessions are cut, as in an outage
            self.proc.wait(30)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
