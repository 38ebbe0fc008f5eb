"""The sandbox's own endpoints: health, counting, reset, fault arming and idempotency read-back.

Everything under `/_` and `/healthz` is exempt from fault injection.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from keel_sandbox.dependencies import DatabaseDep, FaultBoardDep, ReadSession
from keel_sandbox.errors import SandboxError, not_found
from keel_sandbox.faults import MAX_LATENCY_MS, FaultSpecError, parse_fault_spec
from keel_sandbox.models import Base, IdempotencyRecord, WriteLog
from keel_sandbox.routes.common import MAX_LIST, ItemList, OutputModel, RequestModel, UtcDateTime

router = APIRouter(tags=["sandbox control"])


class Health(OutputModel):
    status: str
    database: str


class Stats(OutputModel):
    writes_total: int
    writes_by_table: dict[str, int]
    writes_by_operation: dict[str, int]
    idempotency_keys: int
    idempotent_replays: int
    rows: dict[str, int]
    faults_fired: int


class WriteOut(OutputModel):
    id: int
    operation: str
    table_name: str
    resource_id: str
    status_code: int
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None
    step_id: str | None
    traceparent: str | None


class IdempotencyOut(OutputModel):
    key: str
    operation: str
    method: str
    path: str
    status_code: int
    response: Any
    replay_count: int
    created_at: UtcDateTime
    last_replayed_at: UtcDateTime | None
    write: WriteOut | None


class FaultArm(RequestModel):
    fault: str = Field(min_length=1, examples=["503", "latency:200,429:2", "commit_then_timeout"])
    method: str = Field(default="*", pattern=r"^(\*|[A-Za-z]+)$")
    path_prefix: str = "/"
    count: int | None = Field(default=1, ge=1)
    probability: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    latency_ms: int | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)


class ArmedFaultOut(OutputModel):
    id: int
    fault: str
    method: str
    path_prefix: str
    remaining: int | None
    probability: float
    seed: int | None
    fired: int


class FaultBoardOut(OutputModel):
    faults: list[ArmedFaultOut]
    fired_total: int


class ResetOut(OutputModel):
    reset: bool
    seeded: bool


def collect_stats(session: Session, faults_fired: int) -> Stats:
    by_table = {
        str(name): int(count)
        for name, count in session.execute(
            select(WriteLog.table_name, func.count()).group_by(WriteLog.table_name)
        ).all()
    }
    by_operation = {
        str(name): int(count)
        for name, count in session.execute(select(WriteLog.operation, func.count()).group_by(WriteLog.operation)).all()
    }
    rows = {
        table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
        for table in Base.metadata.sorted_tables
    }
    replays = session.scalar(select(func.coalesce(func.sum(IdempotencyRecord.replay_count), 0)))
    return Stats(
        writes_total=sum(by_table.values()),
        writes_by_table=by_table,
        writes_by_operation=by_operation,
        idempotency_keys=rows[IdempotencyRecord.__tablename__],
        idempotent_replays=int(replays or 0),
        rows=rows,
        faults_fired=faults_fired,
    )


@router.get("/healthz", response_model=Health)
def healthz(database: DatabaseDep) -> Health:
    database.ping()
    return Health(status="ok", database=database.backend)


@router.get("/_stats", response_model=Stats)
def stats(session: ReadSession, board: FaultBoardDep) -> Stats:
    return collect_stats(session, board.fired_total)


@router.post("/_reset", response_model=ResetOut)
async def reset(database: DatabaseDep, board: FaultBoardDep, seed: bool = True) -> ResetOut:
    board.reset()
    await run_in_threadpool(database.reset, seed=seed)
    return ResetOut(reset=True, seeded=seed)


@router.get("/_faults", response_model=FaultBoardOut)
async def list_faults(board: FaultBoardDep) -> FaultBoardOut:
    return FaultBoardOut(
        faults=[ArmedFaultOut.model_validate(armed.view()) for armed in board.armed()],
        fired_total=board.fired_total,
    )


# The board is touched only from the event loop (the middleware and these async handlers), so needs no lock.
@router.post("/_faults", status_code=201, response_model=ArmedFaultOut)
async def arm_fault(body: FaultArm, board: FaultBoardDep) -> ArmedFaultOut:
    try:
        spec = parse_fault_spec(body.fault)
        if body.latency_ms is not None:
            spec = dataclasses.replace(spec, latency_ms=body.latency_ms)
        armed = board.arm(
            spec,
            method=body.method,
            path_prefix=body.path_prefix,
            count=body.count,
            probability=body.probability,
            seed=body.seed,
        )
    except FaultSpecError as exc:
        raise SandboxError(422, "invalid_fault_spec", str(exc), {"fault": body.fault}) from exc
    return ArmedFaultOut.model_validate(armed.view())


@router.delete("/_faults", response_model=dict[str, int])
async def disarm_all(board: FaultBoardDep) -> dict[str, int]:
    return {"disarmed": board.clear()}


@router.delete("/_faults/{fault_id}", status_code=204)
async def disarm(fault_id: int, board: FaultBoardDep) -> None:
    if not board.disarm(fault_id):
        raise not_found("fault", fault_id)


@router.get("/_idempotency/{key}", response_model=IdempotencyOut)
def idempotency_record(key: str, session: ReadSession) -> IdempotencyOut:
    record = session.get(IdempotencyRecord, key)
    if record is None:
        raise SandboxError(404, "idempotency_key_not_found", "no write landed under this Idempotency-Key", {"key": key})
    write = session.scalar(select(WriteLog).where(WriteLog.idempotency_key == key))

    return IdempotencyOut(
        key=record.key,
        operation=record.operation,
        method=record.method,
        path=record.path,
        status_code=record.status_code,
        response=json.loads(record.response_body),
        replay_count=record.replay_count,
        created_at=record.created_at,
        last_replayed_at=record.last_replayed_at,
        write=None if write is None else WriteOut.model_validate(write),
    )


@router.get("/_writes", response_model=ItemList[WriteOut])
def list_writes(
    session: ReadSession,
    idempotency_key: str | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
    operation: str | None = None,
    table: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[WriteOut]:
    query = select(WriteLog).order_by(WriteLog.id).limit(limit)
    filters = [
        (WriteLog.idempotency_key, idempotency_key),
        (WriteLog.run_id, run_id),
        (WriteLog.step_id, step_id),
        (WriteLog.operation, operation),
        (WriteLog.table_name, table),
    ]
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    return ItemList[WriteOut](items=[WriteOut.model_validate(w) for w in session.scalars(query)])
