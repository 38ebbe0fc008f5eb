"""The pull consumer's bookkeeping, without a broker: how much it asks for, when, and what it does with
the server's status messages (keel_shared.pulling, decision 024)."""

import asyncio
import json
from typing import Any

from nats.aio.msg import Msg

from keel_shared.pulling import PullConsumer


class FakeConnection:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.is_connected = True
        self.stats = {"reconnects": 0}

    def new_inbox(self) -> str:
        return "_INBOX_test.abc"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        return None

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        assert subject == "$JS.API.CONSUMER.MSG.NEXT.S.d" and reply == "_INBOX_test.abc"
        self.requests.append(json.loads(payload))


def delivery(n: int) -> Msg:
    return Msg(None, subject=f"work.{n}", reply=f"$JS.ACK.S.d.1.{n}.{n}.0.0", data=b"x")  # type: ignore[arg-type]


def status(code: str, **headers: str) -> Msg:
    return Msg(None, subject="_INBOX_test.abc", data=b"", headers={"Status": code, **headers})  # type: ignore[arg-type]


async def ignore(msg: Msg) -> None:
    """A handler for tests about what the consumer asks for, not what it hands out."""


async def consumer(concurrency: int, handle: Any) -> tuple[PullConsumer, FakeConnection]:
    nc = FakeConnection()
    pulls = PullConsumer(nc, "S", "d", handle, concurrency=concurrency, heartbeat=60)  # type: ignore[arg-type]

    async def info(stream: str, durable: str) -> object:
        return object()

    await pulls.start(info)
    return pulls, nc


async def test_it_asks_for_as_many_messages_as_it_has_slots_and_no_more_until_half_are_free():
    release = asyncio.Event()
    started: list[str] = []

    async def handle(msg: Msg) -> None:
        started.append(msg.subject)
        await release.wait()

    pulls, nc = await consumer(4, handle)
    assert [r["batch"] for r in nc.requests] == [4]

    for n in range(4):
        await pulls._on_message(delivery(n))
    await asyncio.sleep(0)
    assert len(started) == 4 and len(nc.requests) == 1  # all slots busy, nothing more asked

    release.set()
    await asyncio.sleep(0.01)
    assert [r["batch"] for r in nc.requests[1:]] == [2, 2]  # topped up once half the slots were free
    await pulls.stop(1)


async def test_a_delivery_beyond_the_slots_waits_for_one_and_is_never_handled_twice_at_once():
    running = 0
    most = 0
    release = asyncio.Event()

    async def handle(msg: Msg) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    pulls, _ = await consumer(2, handle)
    for n in range(5):  # more than asked for (say, after a reconnect reset the count)
        await pulls._on_message(delivery(n))
    await asyncio.sleep(0)
    assert pulls.busy == 2

    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert most == 2 and pulls.busy == 0
    await pulls.stop(1)


async def test_an_expired_request_gives_back_what_it_never_delivered_and_is_replaced():
    pulls, nc = await consumer(4, ignore)
    await pulls._on_message(status("408", **{"Nats-Pending-Messages": "4", "Nats-Pending-Bytes": "0"}))

    assert [r["batch"] for r in nc.requests] == [4, 4]
    await pulls.stop(1)


async def test_dropped_requests_are_forgotten_and_asked_again_by_the_watchdog_not_at_once():
    pulls, nc = await consumer(4, ignore)
    await pulls._on_message(status("409", Description="Leadership Change"))

    assert len(nc.requests) == 1  # no tight loop on a refusal that may repeat
    assert pulls._requested == 0
    await pulls._pull()  # what the watchdog does within a second
    assert [r["batch"] for r in nc.requests] == [4, 4]
    await pulls.stop(1)


async def test_heartbeats_change_nothing_and_nothing_is_asked_while_disconnected():
    pulls, nc = await consumer(4, ignore)
    await pulls._on_message(status("100", Description="Idle Heartbeat"))
    assert len(nc.requests) == 1

    nc.is_connected = False
    pulls._requested = 0
    await pulls._pull()
    assert len(nc.requests) == 1
    await pulls.stop(1)


async def test_after_stop_a_late_delivery_is_handed_back_not_handled():
    handled: list[str] = []
    naks: list[str] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg.subject)

    pulls, _ = await consumer(2, handle)
    await pulls.stop(1)
    late = delivery(9)

    async def nak(delay: float | None = None) -> None:
        naks.append(late.subject)

    late.nak = nak  # type: ignore[method-assign]
    await pulls._on_message(late)

    assert handled == [] and naks == ["work.9"]
