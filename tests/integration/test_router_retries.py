"""Retry and catch rules on a real nats-server: the first matching retrier applies, catchers route an
error to a fallback that continues with a minimum safe payload, an unhandled error fails the run."""

import pytest

from tests.conftest import StackFactory
from tests.integration.router_kit import events_of, reaches

pytestmark = pytest.mark.integration


async def test_retry_and_catch_rules_route_each_error_class(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        caught = await keel.trigger("caught", {"error_class": "transient"}, "caught-transient", wait=True)
        retried = await keel.trigger("caught", {"error_class": "timeout"}, "caught-timeout", wait=True, timeout=90)
        unhandled = await keel.trigger("caught", {"error_class": "permanent"}, "caught-permanent", wait=True)

        # No retrier matches `transient`: straight to the catcher, whose fallback payload the run continues with.
        assert caught.status == "done", stack.logs()
        assert caught.output["echo"] == {"tier": "unknown", "why": "lookup is down"}
        timeline = await keel.timeline(caught.run_id)
        assert len([e for e in events_of(timeline, "step_scheduled") if e.step_id == "lookup"]) == 1
        (route,) = events_of(timeline, "route_decided")
        assert route.body.kind == "catch" and route.body.writes["steps.lookup"] == {"tier": "unknown"}

        # `timeout` is retried once by its retrier, and no catcher takes it: the run fails saying so.
        assert retried.status == "failed" and "after 2 attempts" in (retried.reason or "")
        assert len(events_of(await keel.timeline(retried.run_id), "retry_scheduled")) == 1

        # Nothing handles `permanent`.
        assert unhandled.status == "failed" and "permanent" in (unhandled.reason or "")
        assert (await reaches(keel, unhandled.run_id, "failed")).error_class == "permanent"
