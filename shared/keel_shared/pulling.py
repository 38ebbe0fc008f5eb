"""Consuming a provisioned durable with pull requests kept ahead of the work (decision 024).

A fetch loop (FastStream's, or nats-py's `fetch`) asks for a batch, waits for it to be filled or for the
server to say there is no more, hands it out, and only then asks again: every message that arrives
between two fetches waits a round trip, and every fetch costs a request and a status message. This
consumer keeps pull requests outstanding for as many messages as it has free handler slots (ADR-37's
"consume" shape): the server pushes each message the moment it is stored, and a new request is sent
when half the slots have been handed out. Requests expire (`expires`) and carry idle heartbeats, so a
request lost with a server restart is noticed and replaced; while the connection is down the consumer
waits instead of piling up requests.

The consumer only moves bytes: what happens to each message (decode, handle, ack, dead-letter) is the
`handle` callback's business (`keel_shared.consuming.Guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from keel_shared.logging import get_logger

log = get_logger(__name__)

Handle = Callable[[Msg], Awaitable[None]]


class DurableMissing(RuntimeError):
    """The durable this consumer binds does not exist: `keel init` provisions it."""


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        handle: Handle,
        *,
        concurrency: int,
        expires: float = 30.0,
        heartbeat: float = 5.0,
    ) -> None:
        self.stream = stream
        self.durable = durable
        self._nc = nc
        self._handle = handle
        self._concurrency = concurrency
        self._inbox = nc.new_inbox()  # under the service's private inbox prefix (connection.py)
        self._expires = expires
        self._heartbeat = heartbeat
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        #: Messages asked for and not yet delivered or given up by the server.
        self._requested = 0
        self._running: set[asyncio.Task[None]] = set()
        self._waiting: deque[Msg] = deque()
        self._last_heard = time.monotonic()
        self._stopping = False

    @property
    def busy(self) -> int:
        """Handlers running now."""
        return len(self._running)

    async def start(self, js_info: Callable[[str, str], Awaitable[object]]) -> None:
        try:
            await js_info(self.stream, self.durable)
        except NotFoundError as exc:
            raise DurableMissing(f"durable {self.durable} on {self.stream} does not exist: run `keel init`") from exc
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self._last_heard = time.monotonic()
        await self._pull()
        self._watchdog = asyncio.create_task(self._watch(), name=f"pull-watchdog-{self.durable}")

    async def stop(self, timeout: float) -> None:
        """Stop asking for messages, hand back the ones not started, and wait up to `timeout` seconds
        for the running handlers (their messages come back to another process if they do not finish)."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        while self._waiting:
            with contextlib.suppress(Exception):
                await self._waiting.popleft().nak()
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)

    # --- receiving -----------------------------------------------------------------------------------
    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None and msg.reply:
            self._requested = max(0, self._requested - 1)
            if self._stopping:
                with contextlib.suppress(Exception):
                    await msg.nak()
                return
            if len(self._running) < self._concurrency:
                self._start(msg)
            else:
                self._waiting.append(msg)
            return
        if status == "100":  # idle heartbeat (or flow control): the requests are alive
            return
        # 404/408: a request ended with messages it never got, and the server says how many.
        pending = msg.headers.get("Nats-Pending-Messages") if msg.headers else None
        if status in ("404", "408") and pending is not None and pending.isdigit():
            self._requested = max(0, self._requested - int(pending))
            await self._pull()
            return
        # Anything else (409: requests dropped on a leadership change, a changed or deleted consumer, too
        # many waiting; 503: no JetStream to answer) leaves the count unknown: start it over, and let the
        # watchdog ask again within a second rather than at once, so a persistent refusal is no busy loop.
        log.info(
            "pull_requests_dropped", durable=self.durable, status=status, reason=(msg.headers or {}).get("Description")
        )
        self._requested = 0

    def _start(self, msg: Msg) -> None:
        task = asyncio.create_task(self._run(msg))
        self._running.add(task)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception:  # the handler settles its message; this only keeps the slot from leaking
            log.exception("handler_crashed", durable=self.durable)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            if self._waiting and not self._stopping:
                self._start(self._waiting.popleft())
            else:
                await self._pull()

    # --- asking --------------------------------------------------------------------------------------
    async def _pull(self) -> None:
        """Ask for what the free slots can take, once at least half of them are not covered."""
        if self._stopping or not self._nc.is_connected:
            return
        wanted = self._concurrency - len(self._running) - len(self._waiting) - self._requested
        if wanted <= 0 or wanted < (self._concurrency + 1) // 2:
            return
        request = {
            "batch": wanted,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._requested += wanted
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
        except Exception as exc:  # a full reconnect buffer, a closed connection: the watchdog asks again
            self._requested -= wanted
            log.warning("pull_request_failed", durable=self.durable, error=f"{type(exc).__name__}: {exc}")

    async def _watch(self) -> None:
        """Replace requests the server no longer holds: after a reconnect (a restarted server forgets
        them), or when nothing, not even a heartbeat, has come back for three heartbeat periods."""
        reconnects = self._nc.stats["reconnects"]
        while True:
            await asyncio.sleep(min(self._heartbeat, 1.0))
            silent = time.monotonic() - self._last_heard
            reconnected = self._nc.stats["reconnects"] != reconnects and self._nc.is_connected
            if reconnected or (self._requested and silent > 3 * self._heartbeat):
                log.info("pull_requests_lost", durable=self.durable, silent_s=round(silent, 1), reconnected=reconnected)
                reconnects = self._nc.stats["reconnects"]
                self._requested = 0
                self._last_heard = time.monotonic()
            await self._pull()
