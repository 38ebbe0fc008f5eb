"""On a real server, `keel init` provisions exactly the durables of the topology table, comes out identical
when run again, and says what it changes in a store provisioned before the table (decision 026)."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from keel_contracts import subjects as s
from keel_contracts import topology
from keel_shared.natsserver import NatsServer
from keel_shared.provisioning import provision
from keel_shared.settings import KeelSettings

pytestmark = pytest.mark.integration


async def test_provisioned_consumers_equal_the_table_and_a_second_init_changes_nothing(nats_server: NatsServer) -> None:
    settings = KeelSettings()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert await provision(js, settings) == []
        for d in topology.DURABLES:
            config = (await js.consumer_info(d.stream, d.name)).config
            filters = config.filter_subjects or [config.filter_subject]
            assert sorted(filters) == sorted(d.filter_subjects), d.name
            assert config.ack_policy == AckPolicy.EXPLICIT and config.ack_wait == settings.ack_wait_seconds
            assert config.max_ack_pending == d.max_ack_pending and config.max_deliver in (None, -1)
        assert await provision(js, settings) == []
    finally:
        await nc.close()


async def test_init_over_a_store_provisioned_before_the_table_says_what_it_changes(nats_server: NatsServer) -> None:
    settings = KeelSettings()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision(js, settings)
        # The router's outcome durable as it was before decision 026: every executor and approval event.
        await js.delete_consumer(s.EVENTS_STREAM, s.ROUTER_EVENTS_DURABLE)
        await js.add_consumer(
            s.EVENTS_STREAM,
            ConsumerConfig(
                durable_name=s.ROUTER_EVENTS_DURABLE,
                filter_subjects=[s.emitter_filter(s.EXECUTOR), s.emitter_filter(s.APPROVAL)],
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait_seconds,
                max_ack_pending=1000,
            ),
        )

        changed = await provision(js, settings)

        router = [line for line in changed if s.ROUTER_EVENTS_DURABLE in line]
        assert any("filter subjects" in line and "keel.run.*.*.executor.*" in line for line in router), changed
        config = (await js.consumer_info(s.EVENTS_STREAM, s.ROUTER_EVENTS_DURABLE)).config
        assert sorted(config.filter_subjects or []) == sorted(topology.durable(s.ROUTER_EVENTS_DURABLE).filter_subjects)
    finally:
        await nc.close()
