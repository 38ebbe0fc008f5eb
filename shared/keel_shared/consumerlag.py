"""Consumer lag per durable: how much work waits for a service, polled from the server's consumer info.

Each service polls only the durables it binds (``ServiceRuntime.pull_subscriber`` registers them), so
the gauge disappears with the service that owns it and no process needs to know the whole topology.
Several instances of one service report the same durable: aggregate with ``max by (consumer)``.

``num_pending`` is what the server has not delivered yet (the backlog); ``num_ack_pending`` is what was
delivered and not acknowledged yet (work in flight, or stuck in a handler that stopped acking).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.api import ConsumerInfo
from prometheus_client import Counter, Gauge

from keel_shared.logging import get_logger

log = get_logger(__name__)

PENDING = Gauge(
    "keel_consumer_pending_messages",
    "Messages on the stream matching a durable consumer and not delivered to it yet (its backlog).",
    ["stream", "consumer"],
)
ACK_PENDING = Gauge(
    "keel_consumer_ack_pending_messages",
    "Messages delivered to a durable consumer and not acknowledged yet.",
    ["stream", "consumer"],
)
POLL_ERRORS = Counter(
    "keel_consumer_info_errors_total",
    "Consumer-info requests that failed (server down, consumer missing, permission denied).",
    ["stream", "consumer"],
)


@dataclass(frozen=True)
class Durable:
    stream: str
    consumer: str


ConsumerInfoFn = Callable[[str, str], Awaitable[ConsumerInfo]]


class ConsumerLagCollector:
    """Polls ``consumer_info`` for each registered durable every ``interval`` seconds."""

    def __init__(self, consumer_info: ConsumerInfoFn, interval: float = 5.0, timeout: float = 2.0) -> None:
        self._info = consumer_info
        self._interval = interval
        self._timeout = timeout
        self._durables: list[Durable] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def durables(self) -> tuple[Durable, ...]:
        return tuple(self._durables)

    def add(self, stream: str, consumer: str) -> None:
        durable = Durable(stream, consumer)
        if durable not in self._durables:
            self._durables.append(durable)

    async def poll_once(self) -> None:
        for d in self._durables:
            try:
                info = await asyncio.wait_for(self._info(d.stream, d.consumer), self._timeout)
            except Exception as exc:
                # Keep the last value rather than reporting 0: "no data" must not look like "no lag".
                POLL_ERRORS.labels(d.stream, d.consumer).inc()
                log.debug("consumer_info_failed", stream=d.stream, consumer=d.consumer, error=str(exc))
                continue
            PENDING.labels(d.stream, d.consumer).set(info.num_pending or 0)
            ACK_PENDING.labels(d.stream, d.consumer).set(info.num_ack_pending or 0)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None and self._durables:
            self._task = asyncio.create_task(self._run(), name="consumer-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
