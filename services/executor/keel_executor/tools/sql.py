"""The built-in SQL adapter (SQLAlchemy): `sql.query`, `sql.execute` and `sql.insert`.

Databases are named, never given by URL in a workflow: `connection: billing` means the URL in
`KEEL_SQL_BILLING_URL` (any SQLAlchemy URL: SQLite, PostgreSQL, ...). Values are always bound as
parameters (`:name` in statements, column values in inserts); nothing from run data is formatted into
SQL text. Table and column names in `sql.insert` are checked against the database's own catalogue.

Writes are idempotent by key. `sql.execute` and `sql.insert` first insert the attempt's idempotency key
into a ledger table (`keel_sql_writes`, created on first use) **in the same transaction** as the write,
and store the write's result there. A repeat with the same key hits the ledger's primary key, rolls
back, and answers the stored result with `replayed: true`: the write happens once however often it is
sent. The ledger is also the read-back: `verify` looks the key up, so an unknown outcome (a connection
lost during commit) is resolved without a blind resend.

`sql.query` runs in a transaction that is always rolled back: a read cannot write, even by mistake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Any
from uuid import UUID

from pydantic import JsonValue
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchTableError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)

from keel_executor.errors import (
    BusinessRuleError,
    PermanentError,
    ToolError,
    TransientError,
    UnknownOutcomeError,
)
from keel_executor.tools.registry import ToolContext
from keel_shared.databases import create_tables, normalize_db_url

LEDGER_TABLE = "keel_sql_writes"
DEFAULT_MAX_ROWS = 1000
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: SQLite reports mistakes in a statement as OperationalError, like an unavailable database; these
#: messages mark the statement's own fault (retrying it cannot help).
_STATEMENT_ERRORS = ("syntax error", "no such table", "no such column", "has no column", "incomplete input")

_ledger_metadata = MetaData()
LEDGER = Table(
    LEDGER_TABLE,
    _ledger_metadata,
    Column("idempotency_key", String(512), primary_key=True),
    Column("run_id", String(128), nullable=False),
    Column("step_id", String(128), nullable=False),
    Column("tool", String(128), nullable=False),
    Column("result", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def connection_url(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PermanentError(f"connection name {name!r} must be letters, digits and '_'")
    var = f"KEEL_SQL_{name.upper()}_URL"
    url = os.environ.get(var)
    if not url:
        raise PermanentError(f"SQL connection {name!r} is not configured: set {var}")
    return url


@cache
def engine_for(url: str) -> Engine:
    engine = create_engine(normalize_db_url(url), pool_pre_ping=True)
    create_tables(_ledger_metadata, engine)
    return engine


def _connection(data: Mapping[str, JsonValue]) -> Engine:
    name = data.get("connection")
    if not isinstance(name, str):
        raise PermanentError("sql tools need `connection`: the name of a configured database")
    return engine_for(connection_url(name))


def _params(data: Mapping[str, JsonValue]) -> dict[str, Any]:
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise PermanentError("params must be an object (bound by name to :placeholders)")
    return dict(params)


def _statement(data: Mapping[str, JsonValue]) -> str:
    statement = data.get("statement")
    if not isinstance(statement, str) or not statement.strip():
        raise PermanentError("statement must be a non-empty SQL string with :name placeholders")
    return statement


def jsonable(value: Any) -> JsonValue:
    """A database value as JSON: datetimes and dates as ISO 8601, decimals as strings (no precision is
    lost), UUIDs as strings, bytes as base64."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def classify_sql(exc: SQLAlchemyError, *, committing: bool = False) -> ToolError:
    """Keel's class of a database error. While committing, a lost connection leaves the write's fate
    unknown; before that, nothing was committed, so it is only transient."""
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"
    lost = (
        isinstance(exc, OperationalError | InterfaceError)
        or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
    ) and not any(hint in str(exc).lower() for hint in _STATEMENT_ERRORS)
    if committing and lost:
        return UnknownOutcomeError(f"the commit got no clean answer ({detail}); the write may have been applied")
    if isinstance(exc, IntegrityError):
        return BusinessRuleError(f"the database refused the write on a constraint ({detail})")
    if lost:
        return TransientError(f"the database is unavailable or busy ({detail})")
    if isinstance(exc, NoSuchTableError):
        return PermanentError(f"no such table: {exc}")
    if isinstance(exc, StatementError | DBAPIError):
        return PermanentError(f"the statement is invalid ({detail})")
    return PermanentError(detail)


def _replay(conn: Connection, key: str) -> dict[str, JsonValue]:
    stored = conn.execute(select(LEDGER.c.result).where(LEDGER.c.idempotency_key == key)).scalar_one()
    result = json.loads(stored)
    return {**result, "replayed": True}


def write_once(
    engine: Engine, ctx: ToolContext, tool: str, work: Callable[[Connection], dict[str, JsonValue]]
) -> dict[str, JsonValue]:
    """Run `work` and record its result under the attempt's idempotency key, in one transaction; a key
    already recorded answers its stored result instead (`replayed: true`)."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            conn.execute(
                insert(LEDGER).values(
                    idempotency_key=ctx.idempotency_key,
                    run_id=ctx.run_id,
                    step_id=ctx.step_id,
                    tool=tool,
                    result="{}",
                    created_at=datetime.now(UTC),
                )
            )
        except IntegrityError:
            trans.rollback()
            return _replay(conn, ctx.idempotency_key)
        except SQLAlchemyError as exc:
            trans.rollback()
            raise classify_sql(exc) from exc
        try:
            result = work(conn)
            conn.execute(
                update(LEDGER).where(LEDGER.c.idempotency_key == ctx.idempotency_key).values(result=json.dumps(result))
            )
        except SQLAlchemyError as exc:
            trans.rollback()
            raise classify_sql(exc) from exc
        except BaseException:
            trans.rollback()
            raise
        try:
            trans.commit()
        except SQLAlchemyError as exc:
            raise classify_sql(exc, committing=True) from exc
        return {**result, "replayed": False}


def _rows(result: Any, max_rows: int) -> list[JsonValue]:
    return [jsonable(dict(row._mapping)) for row in result.fetchmany(max_rows)]


def _max_rows(data: Mapping[str, JsonValue]) -> int:
    value = data.get("max_rows", DEFAULT_MAX_ROWS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise PermanentError(f"max_rows must be an integer from 1 to 100000, got {value!r}")
    return value


def _query(data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    engine = _connection(data)
    statement, params, max_rows = _statement(data), _params(data), _max_rows(data)
    try:
        with engine.connect() as conn, conn.begin() as trans:
            result = conn.execute(text(statement), params)
            rows = _rows(result, max_rows) if result.returns_rows else []
            trans.rollback()  # a read never commits anything
    except SQLAlchemyError as exc:
        raise classify_sql(exc) from exc
    return {"rows": rows, "row_count": len(rows)}


async def query(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`sql.query`: `{connection, statement, params?, max_rows?}` -> `{rows, row_count}`."""
    return await asyncio.to_thread(_query, data)


def _execute(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    engine = _connection(data)
    statement, params, max_rows = _statement(data), _params(data), _max_rows(data)

    def work(conn: Connection) -> dict[str, JsonValue]:
        result = conn.execute(text(statement), params)
        out: dict[str, JsonValue] = {"rowcount": result.rowcount}
        if result.returns_rows:
            out["rows"] = _rows(result, max_rows)
        return out

    return write_once(engine, ctx, "sql.execute", work)


async def execute(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`sql.execute`: `{connection, statement, params?}` run once per idempotency key ->
    `{rowcount, rows?, replayed}`."""
    return await asyncio.to_thread(_execute, ctx, data)


@cache
def _reflect(engine: Engine, table: str, schema: str | None) -> Table:
    return Table(table, MetaData(), autoload_with=engine, schema=schema)


def _insert(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    engine = _connection(data)
    name, schema, key_column = data.get("table"), data.get("schema"), data.get("key_column")
    values = data.get("values")
    for label, value in (("table", name), ("schema", schema), ("key_column", key_column)):
        if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
            raise PermanentError(f"{label} must be a plain identifier, got {value!r}")
    if not isinstance(name, str):
        raise PermanentError("sql.insert needs `table`")
    if not isinstance(values, dict) or not values:
        raise PermanentError("sql.insert needs `values`: an object of column -> value")
    try:
        table = _reflect(engine, name, schema if isinstance(schema, str) else None)
    except SQLAlchemyError as exc:
        raise classify_sql(exc) from exc
    row = dict(values)
    if isinstance(key_column, str):
        row[key_column] = ctx.idempotency_key  # the row names the write that made it
    unknown = sorted(set(row) - set(table.c.keys()))
    if unknown:
        raise PermanentError(f"{name} has no column(s) {unknown} (it has {sorted(table.c.keys())})")

    def work(conn: Connection) -> dict[str, JsonValue]:
        result = conn.execute(insert(table).values(**row))
        key = result.inserted_primary_key
        primary: dict[str, JsonValue] = {}
        if key is not None:
            primary = {col.name: jsonable(v) for col, v in zip(table.primary_key.columns, key, strict=False)}
        # One VALUES row is one row inserted. PostgreSQL fetches the key with RETURNING, after which the
        # driver reports no row count (-1): the answer must not depend on the database.
        return {"rowcount": 1, "primary_key": primary}

    return write_once(engine, ctx, "sql.insert", work)


async def insert_row(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`sql.insert`: `{connection, table, values, schema?, key_column?}` inserts one row once per
    idempotency key -> `{rowcount, primary_key, replayed}`."""
    return await asyncio.to_thread(_insert, ctx, data)


def _lookup(ctx: ToolContext, data: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    engine = _connection(data)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                select(LEDGER.c.result).where(LEDGER.c.idempotency_key == ctx.idempotency_key)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise classify_sql(exc) from exc
    if stored is None:
        return {"found": False}
    return {"found": True, "record": {**json.loads(stored), "replayed": True}}


async def verify(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The read-back of `sql.execute` and `sql.insert`: did the write under this key commit?"""
    return await asyncio.to_thread(_lookup, ctx, data)


execute.verify = verify  # type: ignore[attr-defined]
insert_row.verify = verify  # type: ignore[attr-defined]
