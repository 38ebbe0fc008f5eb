"""What every Keel service process shares: broker, guard, logs, metrics and health, graceful stop.

A service module builds a `ServiceRuntime`, registers its subscribers on `runtime.broker`, and calls
`runtime.run()`. FastStream handles SIGINT/SIGTERM: it stops fetching, waits up to `graceful_timeout`
for running handlers, then drains the connection; unacked messages are redelivered to another process.
"""

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import FastStream
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from keel_shared.connection import inbox_prefix, make_broker
from keel_shared.consumerlag import ConsumerLagCollector
from keel_shared.consuming import HistoryOf, guard_middleware
from keel_shared.logging import configure_logging, get_logger
from keel_shared.metrics import UP, MetricsServer
from keel_shared.settings import KeelSettings

log = get_logger(__name__)


def default_instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class ServiceRuntime:
    def __init__(self, name: str, settings: KeelSettings, graceful_timeout: float = 30.0) -> None:
        self.name = name
        self.settings = settings
        self.instance_id = settings.instance_id or default_instance_id(name)
        self.broker: NatsBroker = make_broker(settings, name, graceful_timeout=graceful_timeout)
        # Set by a service that can say more about a message's past tries, for its dead letter.
        self.dead_letter_history: HistoryOf | None = None
        self.broker.add_middleware(guard_middleware(name, settings, lambda: self.js, lambda: self.dead_letter_history))
        self.app = FastStream(self.broker, logger=None)
        self._metrics: MetricsServer | None = None
        # Lag of the durables this service binds (registered by pull_subscriber), for /metrics.
        self.consumer_lag = ConsumerLagCollector(
            lambda stream, durable: self.js.consumer_info(stream, durable), settings.metrics_poll_seconds
        )
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._kv_lock = asyncio.Lock()
        self._stopping = False
        self.app.on_startup(self._on_startup)
        self.app.after_startup(self._after_startup)
        self.app.on_shutdown(self._on_shutdown)

    # --- connections ---------------------------------------------------------------------------
    @property
    def nc(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream(timeout=self.settings.publish_timeout)
        return self._js

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            async with self._kv_lock:
                if bucket not in self._kv:
                    self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    # --- subscribers ---------------------------------------------------------------------------
    def pull_subscriber(
        self,
        subject: str,
        *,
        stream: str,
        durable: str,
        concurrency: int,
        description: str,
        decode: Callable[[bytes], Any],
    ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """A subscriber bound to a durable consumer that `keel init` provisioned; never creates one.

        Up to `concurrency` messages are handled at once, each as soon as it arrives: a worker pool, not
        fetch-a-batch-and-wait-for-all, so one slow message never holds up the ones fetched with it.
        `decode` turns the body into the handler's one typed argument, raising `ContractViolation` with a
        reason (dead-lettered by the guard); the handler's annotation documents the payload (AsyncAPI).
        Every subscriber has one: the broker does no argument validation of its own (`make_broker`).
        """
        from faststream.middlewares import AckPolicy

        self.consumer_lag.add(stream, durable)

        # Async on purpose: FastStream runs a plain-function decoder in a worker thread. Decoding here
        # rather than in FastStream also means a body that is not JSON (too deep, a huge number) is
        # refused with a reason instead of failing inside the handler like a transient fault.
        async def decoder(msg: Any) -> Any:
            return decode(msg.body)

        subscriber = self.broker.subscriber(
            subject,
            stream=JStream(stream, declare=False),
            durable=durable,
            config=ConsumerConfig(durable_name=durable),
            pull_sub=PullSub(batch_size=concurrency, timeout=1.0),
            max_workers=concurrency,
            inbox_prefix=f"{inbox_prefix(self.name)}.".encode(),
            ack_policy=AckPolicy.MANUAL,
            description=description,
            decoder=decoder,
            # Keel answers nothing directly (answers are events); FastStream would otherwise publish each
            # handler's return value to whatever subject a `reply_to` header names.
            no_reply=True,
        )
        keep_pulling_through_outages(subscriber)
        return subscriber

    # --- lifecycle -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        connected = bool(self.broker._connection and self.broker._connection.is_connected)
        status = "ok" if connected and not self._stopping else "unavailable"
        return {
            "status": status,
            "service": self.name,
            "instance": self.instance_id,
            "nats_connected": connected,
        }

    async def _on_startup(self) -> None:
        if self.settings.metrics_port:
            self._metrics = MetricsServer(self.settings.metrics_host, self.settings.metrics_port, self.health)
            self._metrics.start()

    async def _after_startup(self) -> None:
        UP.labels(self.name).set(1)
        self.consumer_lag.start()
        log.info("service_started", instance=self.instance_id, nats_url=self.settings.nats_url)

    async def _on_shutdown(self) -> None:
        self._stopping = True
        UP.labels(self.name).set(0)
        await self.consumer_lag.stop()
        log.info("service_stopping")

    def run(self) -> None:
        try:
            asyncio.run(self.app.run())
        finally:
            if self._metrics is not None:
                self._metrics.stop()


def keep_pulling_through_outages(subscriber: Any, max_delay: float = 10.0) -> None:
    """Make a FastStream pull subscriber wait out a NATS outage instead of spinning.

    Each fetch publishes a pull request; while the server is away the client buffers them, and once its
    reconnect buffer is full every fetch raises at once. FastStream restarts a failed pull loop
    immediately and keeps every restarted task, so a long outage became a busy loop whose memory grew
    without bound. The loop is wrapped here: an error ends it, it is re-entered after a growing delay.
    """
    pull = subscriber._consume_pull

    async def resilient(*args: Any, **kwargs: Any) -> Any:
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                return await pull(*args, **kwargs)
            except Exception as exc:
                if time.monotonic() - started > 60:
                    delay = 0.5  # it had been working: this is a new outage
                log.warning("pull_loop_failed", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    subscriber._consume_pull = resilient


def setup(name: str) -> KeelSettings:
    settings = KeelSettings()
    configure_logging(name, settings.log_level, settings.log_format)
    return settings
