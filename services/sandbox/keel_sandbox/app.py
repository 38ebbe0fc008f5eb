"""Assembles the sandbox: the API routes, the error shape and the fault-injection wrapper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keel_sandbox import __version__
from keel_sandbox.db import Database
from keel_sandbox.errors import install_error_handlers
from keel_sandbox.fault_injection import FaultInjectionMiddleware
from keel_sandbox.faults import FaultBoard
from keel_sandbox.routes import access, billing, control, crm, tickets


def create_app(database: Database, board: FaultBoard | None = None) -> FaultInjectionMiddleware:
    """The ASGI app; the caller owns `database` and must have called `database.prepare()`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        database.dispose()

    api = FastAPI(
        title="Keel sandbox systems of record",
        version=__version__,
        description="Ticket, CRM, billing and access APIs with idempotency keys and fault injection.",
        lifespan=lifespan,
    )
    fault_board = board or FaultBoard()
    api.state.database = database
    api.state.fault_board = fault_board
    install_error_handlers(api)
    for module in (tickets, crm, billing, access, control):
        api.include_router(module.router)
    return FaultInjectionMiddleware(api, fault_board)
