"""Demo tools for the tour and the tests. `demo.ledger` is a real side effect: a row in a database.

The ledger records every invocation (so tests can see a tool run twice) and applies its effect once
per idempotency key (so tests can see the effect happen once however often the tool ran).
"""

import asyncio
import os
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from pydantic import JsonValue
from sqlalchemy import DateTime, Engine, Integer, String, create_engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from keel_contracts.errors import ErrorClass
from keel_executor.errors import ToolError, TransientError
from keel_executor.tools.registry import ToolContext
from keel_shared.databases import create_tables, normalize_db_url


async def echo(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    return {"echo": data, "step": ctx.step_id}


async def sleep(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    seconds = data.get("seconds", 0.05)
    if not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
        raise ToolError(f"seconds must be a number from 0 to 3600, got {seconds!r}")
    await asyncio.sleep(float(seconds))
    return {"slept": seconds}


async def fail(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Fail with the error class named in the input: lets workflows and tests exercise every class."""
    raw = data.get("error_class", "permanent")
    try:
        error_class = ErrorClass(str(raw))
    except ValueError:
        raise ToolError(f"unknown error_class {raw!r}") from None
    error = ToolError(str(data.get("message", f"demo.fail raised {error_class}")))
    error.error_class = error_class
    raise error


class _Base(DeclarativeBase):
    pass


class Invocation(_Base):
    __tablename__ = "demo_invocations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(512), index=True)
    run_id: Mapped[str] = mapped_column(String(128), index=True)
    step_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Effect(_Base):
    __tablename__ = "demo_effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(512), unique=True)
    run_id: Mapped[str] = mapped_column(String(128), index=True)
    step_id: Mapped[str] = mapped_column(String(128))
    account: Mapped[str] = mapped_column(String(256))
    amount: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def ledger_url(data_dir: str) -> str:
    url = os.environ.get("KEEL_DEMO_LEDGER_URL")
    if url:
        return url
    path = Path(data_dir) / "demo-ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@cache
def ledger_engine(url: str) -> Engine:
    engine = create_engine(normalize_db_url(url))
    create_tables(_Base.metadata, engine)
    return engine


def _apply(url: str, ctx: ToolContext, account: str, amount: int) -> tuple[int, bool]:
    engine = ledger_engine(url)
    now = datetime.now(UTC)
    with Session(engine) as session:
        try:
            effect = Effect(
                idempotency_key=ctx.idempotency_key,
                run_id=ctx.run_id,
                step_id=ctx.step_id,
                account=account,
                amount=amount,
                at=now,
            )
            session.add(effect)
            session.commit()
            return effect.id, False
        except IntegrityError:
            session.rollback()
            existing = session.scalars(select(Effect).where(Effect.idempotency_key == ctx.idempotency_key)).one()
            return existing.id, True


def _record_invocation(url: str, ctx: ToolContext) -> None:
    with Session(ledger_engine(url)) as session:
        session.add(
            Invocation(
                idempotency_key=ctx.idempotency_key,
                run_id=ctx.run_id,
                step_id=ctx.step_id,
                at=datetime.now(UTC),
            )
        )
        session.commit()


async def ledger(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Post `amount` to `account`, once per idempotency key. `delay` seconds pass between the
    invocation being recorded and the effect being applied: the window a crash test aims at."""
    account = data.get("account", "demo")
    amount = data.get("amount", 1)
    delay = data.get("delay", 0)
    if not isinstance(account, str) or not isinstance(amount, int) or not isinstance(delay, int | float):
        raise ToolError("demo.ledger needs account (string), amount (integer) and delay (number)")
    url = ledger_url(ctx.data_dir)
    await asyncio.to_thread(_record_invocation, url, ctx)
    if delay:
        await asyncio.sleep(float(delay))
    effect_id, replayed = await asyncio.to_thread(_apply, url, ctx, account, amount)
    return {"effect_id": effect_id, "replayed": replayed, "account": account, "amount": amount}


async def flaky(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Fail transiently the first `fail_times` calls for an idempotency key, then post like `ledger`.
    Calls are counted in the ledger database, so the count survives executor restarts."""
    fail_times = data.get("fail_times", 1)
    if not isinstance(fail_times, int) or fail_times < 0:
        raise ToolError("demo.flaky needs fail_times (a non-negative integer)")
    url = ledger_url(ctx.data_dir)
    await asyncio.to_thread(_record_invocation, url, ctx)
    calls = await asyncio.to_thread(_invocations_for_key, url, ctx.idempotency_key)
    if calls <= fail_times:
        raise TransientError(f"demo.flaky: call {calls} of {fail_times} planned failures")
    effect_id, replayed = await asyncio.to_thread(_apply, url, ctx, str(data.get("account", "flaky")), 1)
    return {"effect_id": effect_id, "replayed": replayed, "calls": calls}


def _invocations_for_key(url: str, key: str) -> int:
    with Session(ledger_engine(url)) as session:
        query = select(func.count()).select_from(Invocation).where(Invocation.idempotency_key == key)
        return session.scalar(query) or 0


def ledger_counts(url: str, run_id: str | None = None) -> dict[str, int]:
    """(For tests and the demo) how many invocations and effects the ledger holds."""
    with Session(ledger_engine(url)) as session:
        inv = select(func.count()).select_from(Invocation)
        eff = select(func.count()).select_from(Effect)
        if run_id is not None:
            inv = inv.where(Invocation.run_id == run_id)
            eff = eff.where(Effect.run_id == run_id)
        return {"invocations": session.scalar(inv) or 0, "effects": session.scalar(eff) or 0}
