"""The count of runs in flight, read from a real KEEL_EVENTS: what is stored when a router starts, then what
is stored afterwards, per tenant, from run_started and final events only."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import nats
import pytest

from keel_contracts import subjects as s
from keel_contracts.envelope import Message
from keel_router.admission import RunsInFlight, project
from keel_router.aggregate import RunState, apply
from keel_router.emit import Emitter
from keel_router.engine import Engine
from keel_router.workflow.loader import load_workflow_text
from keel_shared.eventstore import EventStore
from keel_shared.natsserver import NatsServer
from keel_shared.provisioning import provision
from keel_shared.settings import KeelSettings
from keel_shared.triggers import build_trigger
from tests.conftest import eventually

pytestmark = pytest.mark.integration

PARK = load_workflow_text(
    'name: park\nsteps:\n  - {id: ask, kind: human, queue: ops, prompt: "go?"}\n',
    "park.yaml",
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def start_run(store: EventStore, tenant: str, key: str) -> RunState:
    trigger = build_trigger("park", {}, key, tenant=tenant)
    events: Sequence[Message] = Engine(lambda: NOW).on_trigger(None, trigger, PARK)
    last = await store.append(events, 0)
    state = None
    for offset, event in enumerate(events):
        state = apply(state, last - len(events) + 1 + offset, event)
    assert state is not None
    return state


async def test_the_count_is_read_from_the_stream_at_start_and_then_follows_it_per_tenant(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision(js, KeelSettings())
        store = EventStore(nc, js, s.ROUTER)
        acme = [await start_run(store, "acme", f"k{n}") for n in range(3)]
        await start_run(store, "globex", "k0")
        ended = Emitter(lambda: NOW).fail(acme[0], "done with it", None)
        await store.append([ended], acme[0].last_seq)

        runs = RunsInFlight(10)
        task = asyncio.create_task(project(nc, js, runs))
        try:
            await eventually(lambda: runs.ready, timeout=30)
            assert (runs.count("acme"), runs.count("globex"), runs.count("initech")) == (2, 1, 0)

            await start_run(store, "acme", "k9")
            await eventually(lambda: runs.count("acme") == 3, timeout=30)
            failed = Emitter(lambda: NOW).fail(acme[1], "stop", None)
            await store.append([failed], acme[1].last_seq)
            await eventually(lambda: runs.count("acme") == 2, timeout=30)
        finally:
            task.cancel()
    finally:
        await nc.close()
