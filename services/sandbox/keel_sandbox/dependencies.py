"""FastAPI dependencies shared by the route modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from keel_sandbox.db import Database
from keel_sandbox.faults import FaultBoard
from keel_sandbox.idempotency import CallerContext, IdempotentWriter, caller_context


def database_of(request: Request) -> Database:
    return cast(Database, request.app.state.database)


def fault_board_of(request: Request) -> FaultBoard:
    return cast(FaultBoard, request.app.state.fault_board)


def read_session(request: Request) -> Iterator[Session]:
    with database_of(request).read_sessions() as session:
        yield session


def idempotent_writer(request: Request, caller: Annotated[CallerContext, Depends(caller_context)]) -> IdempotentWriter:
    return IdempotentWriter(database_of(request).sessions, caller, request.method, request.url.path)


ReadSession = Annotated[Session, Depends(read_session)]
Writer = Annotated[IdempotentWriter, Depends(idempotent_writer)]
DatabaseDep = Annotated[Database, Depends(database_of)]
FaultBoardDep = Annotated[FaultBoard, Depends(fault_board_of)]
