"""PostgreSQL for the tests: a database of its own per test module (random name, dropped after),
and a private server on a free port for the tests that stop and start it.

The shared server is the one every developer machine and CI runs (``KEYGATE_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from keygate.store import pg_schema
from keygate.testing import free_ports
from keygate.vault import generate_master_key

ADMIN_URL = os.environ.get("KEYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _url_for(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new, empty database (``kgtest_<random>``); its URL. Dropped (connections and all) after."""
    name = f"kgtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield _url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def execute(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """One statement on a connection of its own (a plain client, as another program would be)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), args or None)
        return cur.fetchall() if cur.description is not None else []


def truncate(url: str) -> None:
    """Every keygate table empty again, revisions back to 0, test triggers gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(b"DROP TRIGGER IF EXISTS refuse_audit ON audit")
        tables = ", ".join(t for t in pg_schema.TABLES if t != "meta")
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY".encode())
        conn.execute(b"DELETE FROM meta WHERE k NOT IN ('keys_rev', 'upstreams_rev')")
        conn.execute(b"UPDATE meta SET v = '0'")


def snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every keygate table, read by a connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            t: sorted(conn.execute(f"SELECT * FROM {t}".encode()).fetchall(), key=repr)  # noqa: S608
            for t in (*pg_schema.TABLES, "schema_migrations")
        }


class PrivatePostgres:
    """A PostgreSQL server of the test's own on a free port, which the test may stop and start.

    PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the ``postgres`` user
    and the server runs as that user (``runuser``); otherwise as whoever runs the tests.
    """

    def __init__(self) -> None:
        (self.port,) = free_ports()
        self.dir = Path(tempfile.mkdtemp(prefix="kg-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
            )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def shared_secrets() -> dict[str, str]:
    """``KEYGATE_PEPPER`` and ``KEYGATE_MASTER_KEY`` for gateways that share one database."""
    return {"KEYGATE_PEPPER": secrets.token_urlsafe(32), "KEYGATE_MASTER_KEY": generate_master_key()}


def on_postgres(url: str) -> dict[str, object]:
    """The ``extra`` config of a :class:`~keygate.testing.LocalGateway` on this database, without
    Redis: so with the lockout off (a networked database without shared counters refuses to start
    with one, as it would be counted per instance)."""
    return {"database_url": url, "network": {"lockout": {"enabled": False}}}
