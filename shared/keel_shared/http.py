"""Serving an ASGI app from inside a Keel service process, on the service's own event loop."""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class BodyTooLarge(HTTPException):
    """A request body over the limit; an app's handler for HTTPException 413 words the response."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: reading a request body larger than `max_bytes` raises `BodyTooLarge` (413) as soon
    as that is known, from Content-Length or while the body streams in, so it is never read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        over = declared.isdigit() and int(declared) > self.max_bytes
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if over:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
