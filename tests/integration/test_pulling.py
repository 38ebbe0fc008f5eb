"""The lean pull consumer on a real server (keel_shared.pulling, decision 024): messages are handled as
they arrive, never more at once than the concurrency, stopping hands back what was not started, and a
server restart or a long outage is waited out without piling up requests or tasks."""

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from keel_shared.natsserver import NatsServer
from keel_shared.pulling import DurableMissing, PullConsumer
from tests.conftest import eventually

pytestmark = pytest.mark.integration


async def provision(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULL", subjects=["pull.>"]))
    await js.add_consumer("PULL", ConsumerConfig(durable_name="work", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    await nc.close()


async def publish(url: str, *subjects: str) -> None:
    nc = await nats.connect(url)
    for subject in subjects:
        await nc.jetstream().publish(subject, subject.encode())
    await nc.close()


async def test_each_message_is_handled_as_it_arrives_never_more_at_once_than_the_concurrency(
    nats_server: NatsServer,
) -> None:
    await provision(nats_server.url)
    nc = await nats.connect(nats_server.url)
    running = 0
    most = 0
    done: list[str] = []
    release_slow = asyncio.Event()

    async def handle(msg: Msg) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if msg.subject == "pull.slow":
            await release_slow.wait()
        else:
            await asyncio.sleep(0.01)
        running -= 1
        done.append(msg.subject)
        await msg.ack()

    consumer = PullConsumer(nc, "PULL", "work", handle, concurrency=3, heartbeat=0.5)
    await consumer.start(nc.jetstream().consumer_info)
    try:
        await publish(nats_server.url, "pull.slow", *(f"pull.{i}" for i in range(20)))
        # The slow one holds a slot; the others keep flowing through the other two (no batch barrier).
        await eventually(lambda: len(done) == 20, timeout=30)
        assert "pull.slow" not in done
        assert most <= 3
        release_slow.set()
        await eventually(lambda: "pull.slow" in done, timeout=30)
    finally:
        await consumer.stop(5)
        await nc.close()


async def test_stopping_waits_for_running_handlers_and_hands_back_the_rest(nats_server: NatsServer) -> None:
    await provision(nats_server.url)
    nc = await nats.connect(nats_server.url)
    started: list[str] = []
    finished: list[str] = []

    async def handle(msg: Msg) -> None:
        started.append(msg.subject)
        await asyncio.sleep(0.5)
        finished.append(msg.subject)
        await msg.ack()

    consumer = PullConsumer(nc, "PULL", "work", handle, concurrency=2, heartbeat=0.5)
    await consumer.start(nc.jetstream().consumer_info)
    await publish(nats_server.url, *(f"pull.{i}" for i in range(6)))
    await eventually(lambda: len(started) == 2, timeout=30)

    await consumer.stop(10)

    assert sorted(finished) == sorted(started)  # whatever had started was allowed to finish

    async def only_the_rest_left() -> bool:
        info = await nc.jetstream().consumer_info("PULL", "work")
        return int(info.num_ack_pending or 0) + int(info.num_pending or 0) == 6 - len(finished)

    # The rest is there for another process: never started here, never acknowledged.
    await eventually(only_the_rest_left, timeout=30)
    await nc.close()


async def test_binding_a_durable_that_was_never_provisioned_says_so(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(StreamConfig(name="BARE", subjects=["bare.>"]))

    async def handle(msg: Msg) -> None:
        raise AssertionError("nothing to handle")

    consumer = PullConsumer(nc, "BARE", "missing", handle, concurrency=1)
    with pytest.raises(DurableMissing, match="keel init"):
        await consumer.start(nc.jetstream().consumer_info)
    await nc.close()


async def test_a_consumer_waits_out_an_outage_and_consumes_again_after_a_server_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    await provision(server.url)
    # A small reconnect buffer stands for a long outage: anything sent while the server is away fills it.
    nc = await nats.connect(server.url, pending_size=2000, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    received: list[bytes] = []

    async def handle(msg: Msg) -> None:
        received.append(msg.data)
        await msg.ack()

    consumer = PullConsumer(nc, "PULL", "work", handle, concurrency=4, heartbeat=0.3)
    await consumer.start(nc.jetstream().consumer_info)
    try:
        tasks_before = len(asyncio.all_tasks())
        server.kill()
        await eventually(lambda: not nc.is_connected, timeout=30)
        await asyncio.sleep(3)  # many heartbeat periods with the server away
        assert len(asyncio.all_tasks()) <= tasks_before + 2  # no pile of restarted loops
        assert nc._pending_data_size < 2000  # no pile of buffered pull requests either

        server.start()
        await eventually(lambda: nc.is_connected, timeout=60)
        # The restarted server forgot the old pull requests; the consumer notices the silence and asks again.
        await publish(server.url, "pull.after")
        await eventually(lambda: received == [b"pull.after"], timeout=60)
    finally:
        await consumer.stop(5)
        await nc.close()
        server.stop()
