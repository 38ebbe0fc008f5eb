"""Durable waits, caps and cancellation on a real nats-server with real processes."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel_executor.tools.demo import ledger_counts
from keel_shared.natsserver import NatsServer
from tests.conftest import StackFactory, eventually
from tests.integration.router_kit import approval_request, decide_approval, events_of, reaches, types

pytestmark = pytest.mark.integration


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_a_wait_parks_the_run_in_waiting_then_its_durable_timer_moves_it_on(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("pause", {"until": soon(2)}, "pause-1")
        view = await reaches(keel, answer.run_id, "waiting")
        assert view.current_step == "hold"
        assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0
        await reaches(keel, answer.run_id, "done")
        timeline = await keel.timeline(answer.run_id)
    (started,) = events_of(timeline, "wait_started")
    (route,) = [e for e in events_of(timeline, "route_decided") if e.body.kind == "wait"]
    assert route.occurred_at >= started.body.due_at  # never before its time
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_wait_survives_a_router_restart_and_a_nats_server_restart(
    keel_stack: StackFactory, nats_server: NatsServer
) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("pause", {"until": soon(6)}, "pause-restarts")
        await reaches(keel, answer.run_id, "waiting")
    # Nothing in any process holds the wait: kill the router, restart the server under it, start again.
    stack.kill("router")
    nats_server.stop()
    nats_server.start()
    await stack.restart("router")
    async with await stack.client() as keel:
        await reaches(keel, answer.run_id, "done", timeout=120)
        timeline = await keel.timeline(answer.run_id)
    assert types(timeline).count("wait_started") == 1
    assert [e.body.kind for e in events_of(timeline, "route_decided")] == ["wait"]
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


def policy_file(tmp_path: Path, caps: str) -> dict[str, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\ncaps:\n{caps}")
    return {"KEEL_POLICY_FILE": str(path)}


async def test_each_cap_blocks_the_run_with_its_reason(keel_stack: StackFactory, tmp_path: Path) -> None:
    caps = "  max_steps_per_run: 2\n  max_total_attempts: 2\n  max_run_duration_seconds: 3\n"
    stack = await keel_stack(env=policy_file(tmp_path, caps))
    async with await stack.client() as keel:
        steps = await keel.trigger("ledger3", {"delay": 0}, "cap-steps")
        attempts = await keel.trigger("flaky", {"fail_times": 5}, "cap-attempts")
        duration = await keel.trigger("pause", {"until": soon(4)}, "cap-duration")

        view = await reaches(keel, steps.run_id, "blocked")
        assert view.reason.startswith(
            "cap max_steps_per_run reached: 2 steps started, limit 2; not starting step three"
        )
        view = await reaches(keel, attempts.run_id, "blocked")
        assert view.reason.startswith("cap max_total_attempts reached: 2 tool attempts made, limit 2")
        view = await reaches(keel, duration.run_id, "blocked")
        assert view.reason.startswith("cap max_run_duration_seconds reached")
        blocked = events_of(await keel.timeline(steps.run_id), "run_blocked")
    assert [b.body.cap for b in blocked] == ["max_steps_per_run"]
    assert ledger_counts(stack.ledger_url, steps.run_id)["effects"] == 2
    assert ledger_counts(stack.ledger_url, attempts.run_id)["invocations"] == 2
    assert ledger_counts(stack.ledger_url, duration.run_id)["invocations"] == 0


async def test_cancel_mid_write_lets_the_write_finish_and_starts_nothing_after_it(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("ledger3", {"delay": 2.0}, "cancel-mid")
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["invocations"] >= 1)
        view = await keel.cancel(answer.run_id, requested_by="ops", reason="wrong account")
        assert view.status == "cancelled" and "wrong account" in view.reason
        # The write already sent finishes and its outcome is recorded; nothing follows it.
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["effects"] == 1)
        timeline = await eventually(lambda: _with(keel.timeline(answer.run_id), lambda t: "step_succeeded" in types(t)))
        again = await keel.cancel(answer.run_id, requested_by="ops", reason="twice")
        assert again.status == "cancelled" and "wrong account" in again.reason
    (cancelled,) = events_of(timeline, "run_cancelled")
    assert cancelled.body.in_flight_step == "one" and cancelled.body.requested_by == "ops"
    assert [e.step_id for e in events_of(timeline, "step_scheduled")] == ["one"]
    assert (await _final_view(stack, answer.run_id)).status == "cancelled"
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_cancelled_run_ignores_a_later_approval(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 5}, "cancel-parked")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        assert (await keel.cancel(answer.run_id, requested_by="ops", reason="stop")).status == "cancelled"
        await decide_approval(stack, request, "granted")
        await eventually(lambda: _with(keel.timeline(answer.run_id), lambda t: "approval_granted" in types(t)))
        assert (await keel.run(answer.run_id)).status == "cancelled"
        timeline = await keel.timeline(answer.run_id)
    assert "post" not in [e.step_id for e in events_of(timeline, "step_scheduled")]
    assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0


async def _with(coro, predicate):
    value = await coro
    return value if predicate(value) else None


async def _final_view(stack, run_id):
    async with await stack.client() as keel:
        return await keel.run(run_id)
