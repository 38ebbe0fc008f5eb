"""In-process sandbox: the ASGI app driven by httpx against a temporary SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from keel_sandbox.app import create_app
from keel_sandbox.db import Database
from keel_sandbox.fault_injection import FaultInjectionMiddleware


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'sandbox.db'}")
    db.prepare()
    yield db
    db.dispose()


@pytest.fixture
def app(database: Database) -> FaultInjectionMiddleware:
    return create_app(database)


@pytest.fixture
async def client(app: FaultInjectionMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test") as client:
        yield client


RowCounter = Callable[..., int]


@pytest.fixture
def count_rows(database: Database) -> RowCounter:
    """Counts straight from the database, independently of the API under test."""

    def count(table: str, **where: Any) -> int:
        clause = " AND ".join(f"{column} = :{column}" for column in where) or "1 = 1"
        with database.engine.connect() as connection:
            query = text(f"SELECT count(*) FROM {table} WHERE {clause}")
            return int(connection.execute(query, where).scalar_one())

    return count
