"""Serving an ASGI app from inside a Keel service process, on the service's own event loop."""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: FastStream owns SIGINT/SIGTERM and stops us in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_embedded(
    app: Any, host: str, port: int, *, name: str, graceful_shutdown_seconds: float
) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    """Start serving `app` and return once it listens (or raise why it could not).

    Access logs are off: request paths can carry ids (approvals, runs) and services log what matters
    themselves, with identities but never credentials.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(graceful_shutdown_seconds),
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"{name} HTTP server did not start on {host}:{port}")
        await asyncio.sleep(0.05)
    return server, task
