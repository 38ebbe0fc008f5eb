"""What every Keel service process shares: broker, guard, logs, metrics and health, graceful stop.

A service module builds a `ServiceRuntime`, registers its consumers with `runtime.pull_subscriber`, and
calls `runtime.run()`. FastStream runs the process (connection, signals, startup and shutdown hooks); on
SIGINT/SIGTERM the consumers stop asking for messages, hand back the ones not started, wait up to
`graceful_timeout` for running handlers, then the connection drains; unacked messages are redelivered to
another process.
"""

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import FastStream
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from keel_contracts import subjects as s
from keel_contracts import topology
from keel_shared.connection import make_broker
from keel_shared.consumerlag import ConsumerLagCollector
from keel_shared.consuming import Guard, HistoryOf
from keel_shared.logging import configure_logging, get_logger
from keel_shared.metrics import UP, MetricsServer
from keel_shared.pulling import PullConsumer
from keel_shared.settings import KeelSettings

log = get_logger(__name__)

Handler = Callable[[Any], Awaitable[Any]]


def default_instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class ServiceRuntime:
    def __init__(self, name: str, settings: KeelSettings, graceful_timeout: float = 30.0) -> None:
        self.name = name
        self.settings = settings
        self.instance_id = settings.instance_id or default_instance_id(name)
        self.broker: NatsBroker = make_broker(settings, name, graceful_timeout=graceful_timeout)
        # What the service consumes, for its AsyncAPI document only: never connected or started.
        self.spec_broker: NatsBroker = make_broker(settings, name)
        self.graceful_timeout = graceful_timeout
        # Set by a service that can say more about a message's past tries, for its dead letter.
        self.dead_letter_history: HistoryOf | None = None
        #: (stream, durable, concurrency, guard) of every consumer registered, started after connecting.
        self.consumer_specs: list[tuple[str, str, int, Guard]] = []
        self.consumers: list[PullConsumer] = []
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
        durable: str,
        *,
        concurrency: int,
        decode: Callable[[bytes], Any],
        description: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """A consumer of a durable of the topology table (`keel_contracts.topology.DURABLES`), which
        `keel init` provisioned: its stream and filter subjects come from the table; it is never created
        here, and only the service the table names may bind it.

        Up to `concurrency` messages are handled at once, each as soon as it arrives, with pull requests
        kept ahead of the work (`keel_shared.pulling`, decision 024). `decode` turns the body into the
        handler's one typed argument, raising `ContractViolation` with a reason (dead-lettered by the
        guard). The handler is also registered, with its annotation, on `spec_broker`: FastStream
        documents it (AsyncAPI) but does not consume for it.
        """
        spec = topology.durable(durable)
        if spec.consumer != self.name:
            raise ValueError(f"durable {durable} belongs to {spec.consumer}, not {self.name} (keel_contracts.topology)")
        stream = spec.stream
        self.consumer_lag.add(stream, durable)

        def register(handler: Handler) -> Handler:
            # A durable with several filter subjects is documented once per subject; it is still one
            # consumer with one pull loop.
            for filter_subject in spec.filter_subjects:
                self.spec_broker.subscriber(
                    filter_subject,
                    stream=JStream(stream, declare=False),
                    durable=durable,
                    config=ConsumerConfig(durable_name=durable),
                    pull_sub=PullSub(batch_size=concurrency),
                    description=description or spec.description,
                    no_reply=True,
                )(handler)
            guard = Guard(
                self.name,
                durable,
                self.settings,
                lambda: self.js,
                decode,
                handler,
                self._history,
                run_events=stream == s.EVENTS_STREAM,
            )
            self.consumer_specs.append((stream, durable, concurrency, guard))
            return handler

        return register

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

    def _history(self) -> HistoryOf | None:
        return self.dead_letter_history

    async def _after_startup(self) -> None:
        for stream, durable, concurrency, guard in self.consumer_specs:
            consumer = PullConsumer(self.nc, stream, durable, guard, concurrency=concurrency)
            await consumer.start(self.js.consumer_info)
            self.consumers.append(consumer)
        UP.labels(self.name).set(1)
        self.consumer_lag.start()
        log.info("service_started", instance=self.instance_id, nats_url=self.settings.nats_url)

    async def _on_shutdown(self) -> None:
        self._stopping = True
        UP.labels(self.name).set(0)
        # Before the connection drains: running handlers finish (or their messages come back elsewhere).
        await asyncio.gather(*(consumer.stop(self.graceful_timeout) for consumer in self.consumers))
        await self.consumer_lag.stop()
        log.info("service_stopping")

    def run(self) -> None:
        try:
            asyncio.run(self.app.run())
        finally:
            if self._metrics is not None:
                self._metrics.stop()


def setup(name: str) -> KeelSettings:
    settings = KeelSettings()
    configure_logging(name, settings.log_level, settings.log_format)
    return settings
