"""ASGI middleware that injects the fault asked for by `X-Sandbox-Fault` or armed on the `FaultBoard`.

It wraps the whole application, outside Starlette's error middleware, so that an injected connection drop
is never turned into a polite 500 on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel_sandbox.errors import error_body
from keel_sandbox.faults import STATUS_OF, FaultBoard, FaultKind, FaultSpec, FaultSpecError, parse_fault_spec

# uvicorn's own logger, so fault lines appear next to its access log; dropped requests have no access line.
logger = logging.getLogger("uvicorn.error")

FAULT_HEADER = b"x-sandbox-fault"
# Control and health endpoints stay reachable whatever is armed, so a test can always disarm.
EXEMPT_PREFIXES = ("/_", "/healthz")


class ConnectionDropped(ConnectionError):
    """Raised when no server transport is reachable to close, e.g. when driven in-process by httpx."""


def _server_transport(send: Send) -> tuple[Any, asyncio.BaseTransport] | None:
    # ASGI has no message for "abort this connection". uvicorn's `send` is a bound method of its per-request
    # cycle object, which holds the socket's transport; closing that is the real drop a client would see.
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if isinstance(transport, asyncio.BaseTransport):
        return cycle, transport
    return None


async def drop_connection(send: Send) -> None:
    found = _server_transport(send)
    if found is None:
        raise ConnectionDropped("the sandbox dropped the connection as asked")
    cycle, transport = found
    transport.close()
    # uvicorn learns of the close in `connection_lost`, a few loop iterations later. Returning before it has
    # would make it try to answer 500 on the dying socket.
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0)


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def wait_for_client_to_leave(receive: Receive, timeout_s: float) -> None:
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(disconnected(), timeout=timeout_s)


class FaultInjectionMiddleware:
    def __init__(self, app: ASGIApp, board: FaultBoard) -> None:
        self.app = app
        self.board = board

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        header = _header(scope, FAULT_HEADER)
        if header is not None:
            try:
                spec: FaultSpec | None = parse_fault_spec(header)
            except FaultSpecError as exc:
                await send_json(send, 400, error_body("invalid_fault_spec", str(exc), {"spec": header}), [])
                return
            self.board.count_fired()
        else:
            spec = self.board.take(str(scope["method"]), str(scope["path"]))
        if spec is None:
            await self.app(scope, receive, send)
            return
        await self._inject(spec, scope, receive, send)

    async def _inject(self, spec: FaultSpec, scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("keel sandbox: injecting %s into %s %s", spec.describe(), scope["method"], scope["path"])
        if spec.latency_ms:
            await asyncio.sleep(spec.latency_ms / 1000)
        kind = spec.kind
        if kind is None:
            await self.app(scope, receive, send)
        elif kind in STATUS_OF:
            headers = (
                [(b"retry-after", str(spec.retry_after_s).encode("ascii"))]
                if kind is FaultKind.TOO_MANY_REQUESTS
                else []
            )
            message = f"injected fault {kind.value}: the request was not processed"
            await send_json(send, STATUS_OF[kind], error_body("injected_fault", message, {"fault": kind}), headers)
        elif kind is FaultKind.DROP:
            await drop_connection(send)
        elif kind is FaultKind.COMMIT_THEN_500:
            status = await self._run_discarding_response(scope, receive)
            message = "injected fault commit_then_500: the request was processed, then answered 500"
            await send_json(
                send, 500, error_body("injected_fault", message, {"fault": kind, "real_status": status}), []
            )
        elif kind is FaultKind.COMMIT_THEN_TIMEOUT:
            await self._run_discarding_response(scope, receive)
            await wait_for_client_to_leave(receive, spec.hang_ms / 1000)
            await drop_connection(send)

    async def _run_discarding_response(self, scope: Scope, receive: Receive) -> int | None:
        status: int | None = None

        async def discard(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])

        await self.app(scope, receive, discard)
        return status


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
