"""A consumer waits out a long NATS outage: no busy loop, no growing pile of tasks, and it consumes again
once the server is back (keel_shared.service.keep_pulling_through_outages)."""

import asyncio
from pathlib import Path

import pytest
from faststream.nats import JStream, NatsBroker, PullSub

from keel_shared.natsserver import NatsServer
from keel_shared.service import keep_pulling_through_outages
from tests.conftest import eventually

pytestmark = pytest.mark.integration


async def test_a_pull_consumer_survives_an_outage_longer_than_its_reconnect_buffer(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    # A small reconnect buffer stands for a long outage: the buffered pull requests fill it in seconds.
    broker = NatsBroker(server.url, logger=None, apply_types=False, pending_size=2000, reconnect_time_wait=0.5)
    received: list[bytes] = []

    @broker.subscriber(
        "outage.>",
        stream=JStream("OUTAGE", subjects=["outage.>"]),
        durable="outage",
        pull_sub=PullSub(batch_size=4, timeout=0.2),
        max_workers=4,
    )
    async def handle(body: bytes) -> None:
        received.append(body)

    subscriber = broker.subscribers[0]
    keep_pulling_through_outages(subscriber, max_delay=1.0)
    await broker.start()
    try:
        server.kill()
        nc = broker._connection
        assert nc is not None
        await eventually(lambda: nc._pending_data_size > 1500, timeout=60)
        await asyncio.sleep(3)  # unwrapped, FastStream restarted the failing loop thousands of times here

        assert len(subscriber.tasks) <= 4

        server.start()
        await eventually(lambda: nc.is_connected, timeout=60)
        await broker.publish(b"after the outage", "outage.1", stream="OUTAGE")
        await eventually(lambda: received == [b"after the outage"], timeout=60)
    finally:
        await broker.stop()
        server.stop()
