"""The SQL adapter on a real SQLite file: bound parameters, one write per idempotency key, read-back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from keel_contracts.errors import ErrorClass
from keel_executor.errors import ToolError
from keel_executor.tools import sql
from keel_executor.tools.registry import ToolContext

CTX = ToolContext(
    run_id="r-1",
    workflow="orders",
    step_id="post",
    attempt=1,
    tenant="acme",
    correlation_id="c-1",
    idempotency_key="keel-r-1-post-1",
    timeout_seconds=30,
    data_dir="/nonexistent",
)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'books.db'}"
    with create_engine(url).begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL UNIQUE,"
                " amount INTEGER NOT NULL, write_key TEXT)"
            )
        )
    monkeypatch.setenv("KEEL_SQL_BOOKS_URL", url)
    return url


def rows(url: str, query: str = "SELECT account, amount, write_key FROM entries ORDER BY id") -> list[tuple]:
    with create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(query))]


async def test_insert_writes_one_row_and_a_repeat_with_the_same_key_is_a_no_op(db: str):
    data = {
        "connection": "books",
        "table": "entries",
        "values": {"account": "acme", "amount": 5},
        "key_column": "write_key",
    }

    first = await sql.insert_row(CTX, data)
    second = await sql.insert_row(CTX, data)

    assert first == {"rowcount": 1, "primary_key": {"id": 1}, "replayed": False}
    assert second == {"rowcount": 1, "primary_key": {"id": 1}, "replayed": True}
    assert rows(db) == [("acme", 5, "keel-r-1-post-1")]


async def test_execute_runs_a_statement_with_bound_parameters_once_per_key(db: str):
    hostile = "x'); DROP TABLE entries; --"
    data = {
        "connection": "books",
        "statement": "INSERT INTO entries (account, amount) VALUES (:account, :amount)",
        "params": {"account": hostile, "amount": 7},
    }

    assert await sql.execute(CTX, data) == {"rowcount": 1, "replayed": False}
    assert await sql.execute(CTX, data) == {"rowcount": 1, "replayed": True}
    other = replace(CTX, idempotency_key="another-write")
    assert (await sql.execute(other, {**data, "params": {"account": "b", "amount": 1}}))["replayed"] is False

    assert rows(db) == [(hostile, 7, None), ("b", 1, None)]  # the text was a value, not SQL


async def test_a_failed_write_leaves_no_ledger_row_so_a_fixed_retry_runs(db: str):
    await sql.insert_row(
        replace(CTX, idempotency_key="k0"),
        {"connection": "books", "table": "entries", "values": {"account": "a", "amount": 1}},
    )
    dup = {"connection": "books", "table": "entries", "values": {"account": "a", "amount": 2}}

    with pytest.raises(ToolError) as caught:
        await sql.insert_row(CTX, dup)
    assert caught.value.error_class is ErrorClass.BUSINESS_RULE  # a unique constraint refused it

    assert await sql.verify(CTX, {"connection": "books"}) == {"found": False}
    fixed = await sql.insert_row(CTX, {**dup, "values": {"account": "b", "amount": 2}})
    assert fixed["replayed"] is False
    assert rows(db) == [("a", 1, None), ("b", 2, None)]


async def test_the_read_back_finds_a_committed_write_by_its_key(db: str):
    data = {"connection": "books", "table": "entries", "values": {"account": "acme", "amount": 5}}
    assert await sql.verify(CTX, {"connection": "books"}) == {"found": False}

    await sql.insert_row(CTX, data)

    assert await sql.verify(CTX, {"connection": "books"}) == {
        "found": True,
        "record": {"rowcount": 1, "primary_key": {"id": 1}, "replayed": True},
    }
    assert sql.insert_row.verify is sql.verify  # type: ignore[attr-defined]
    assert sql.execute.verify is sql.verify  # type: ignore[attr-defined]


async def test_query_returns_rows_as_json_and_never_commits(db: str):
    await sql.insert_row(CTX, {"connection": "books", "table": "entries", "values": {"account": "acme", "amount": 5}})

    out = await sql.query(
        CTX,
        {
            "connection": "books",
            "statement": "SELECT account, amount FROM entries WHERE amount > :min",
            "params": {"min": 1},
        },
    )
    sneaky = await sql.query(CTX, {"connection": "books", "statement": "DELETE FROM entries"})

    assert out == {"rows": [{"account": "acme", "amount": 5}], "row_count": 1}
    assert sneaky == {"rows": [], "row_count": 0}
    assert rows(db) == [("acme", 5, None)]  # the DELETE was rolled back


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"connection": "ledger", "statement": "SELECT 1"}, "KEEL_SQL_LEDGER_URL"),
        ({"connection": "a-b", "statement": "SELECT 1"}, "letters, digits"),
        ({"connection": "books", "table": "nope", "values": {"a": 1}}, "no such table"),
        ({"connection": "books", "table": "entries", "values": {"acount": 1}}, "no column(s) ['acount']"),
        ({"connection": "books", "table": "entries; DROP", "values": {"a": 1}}, "plain identifier"),
        ({"connection": "books", "table": "entries", "values": {}}, "needs `values`"),
        ({"connection": "books", "statement": "SELEC nonsense"}, "invalid"),
        ({"connection": "books", "statement": ""}, "non-empty SQL"),
    ],
)
async def test_bad_input_is_permanent(db: str, data: dict, message: str):
    tool = sql.insert_row if "table" in data else sql.execute

    with pytest.raises(ToolError) as caught:
        await tool(CTX, data)

    assert caught.value.error_class is ErrorClass.PERMANENT
    assert message in str(caught.value)


def test_a_lost_connection_while_committing_is_an_unknown_outcome_and_before_it_transient():
    from sqlalchemy.exc import OperationalError

    lost = OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    assert sql.classify_sql(lost, committing=True).error_class is ErrorClass.UNKNOWN_OUTCOME
    assert sql.classify_sql(lost).error_class is ErrorClass.TRANSIENT


def test_jsonable_keeps_precision_and_types_readable():
    from datetime import UTC, datetime
    from decimal import Decimal

    assert sql.jsonable({"at": datetime(2025, 1, 2, tzinfo=UTC), "n": Decimal("1.10"), "b": b"\x00"}) == {
        "at": "2025-01-02T00:00:00+00:00",
        "n": "1.10",
        "b": "AA==",
    }
