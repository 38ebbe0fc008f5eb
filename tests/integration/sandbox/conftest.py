"""A real sandbox server in a subprocess on a free loopback port, over SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_sandbox.testing import SandboxProcess, start_sandbox
from tests.conftest import postgres_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sandbox.db'}"
    else:
        yield from postgres_schema_url("keel_sandbox")


@pytest.fixture
def sandbox(db_url: str, tmp_path: Path) -> Iterator[SandboxProcess]:
    running = start_sandbox(db_url, tmp_path)
    try:
        yield running
    finally:
        running.stop()
