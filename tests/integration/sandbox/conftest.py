"""A real sandbox server in a subprocess on a free loopback port, over SQLite or PostgreSQL."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from keel_sandbox.testing import SandboxProcess, start_sandbox

POSTGRES_HOST = "127.0.0.1:5432"
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


def _postgres_schema() -> Iterator[str]:
    """A fresh schema in the shared `test` database, put first on the server's search_path; dropped after.

    A schema rather than a database: CREATE DATABASE copies template1 and fails while anyone else is
    connected to it, which other suites on the same server may well be.
    """
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_HOST} (user postgres, database test): {exc}".strip()
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    schema = f"keel_sandbox_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"postgresql+psycopg://postgres@{POSTGRES_HOST}/test?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sandbox.db'}"
    else:
        yield from _postgres_schema()


@pytest.fixture
def sandbox(db_url: str, tmp_path: Path) -> Iterator[SandboxProcess]:
    running = start_sandbox(db_url, tmp_path)
    try:
        yield running
    finally:
        running.stop()
