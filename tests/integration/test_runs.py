"""A run goes through router and executor durably: real nats-server, real processes, real SQLite."""

import asyncio
import base64
import json

import nats
import pytest

from keel_contracts import subjects as s
from keel_contracts.codec import decode
from keel_contracts.deadletter import DeadLetter
from keel_contracts.envelope import run_id_for
from keel_executor.tools.demo import ledger_counts
from keel_shared.triggers import build_trigger
from tests.conftest import StackFactory, eventually

pytestmark = pytest.mark.integration


def types(timeline: list) -> list[str]:
    return [entry.type for entry in timeline]


async def test_a_three_step_run_completes_and_its_timeline_is_the_event_stream(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("demo", {"customer": "ACME"}, "order-1", wait=True)
        assert answer.status == "done", stack.logs()
        assert answer.joined is False
        timeline = await keel.timeline(answer.run_id)
        assert types(timeline) == [
            "run_started",
            "step_scheduled",
            "step_succeeded",
            "step_scheduled",
            "step_succeeded",
            "step_scheduled",
            "step_succeeded",
            "run_completed",
        ]
        assert [e.event.step_id for e in timeline if e.type == "step_succeeded"] == ["receive", "draft", "post"]
        await eventually(lambda: _status_is(keel, answer.run_id, "done"))
        view = await keel.run(answer.run_id)
        assert view is not None and view.steps_done == 3 and view.attempts == 3
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_ten_concurrent_triggers_with_one_intent_key_make_one_run(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answers = await asyncio.gather(*(keel.trigger("demo", {}, "same-intent") for _ in range(10)))
        run_ids = {a.run_id for a in answers}
        assert run_ids == {run_id_for("default", "demo", "same-intent")}
        assert sorted(a.joined for a in answers) == [False] + [True] * 9
        run_id = run_ids.pop()
        await eventually(lambda: _status_is(keel, run_id, "done"))
        timeline = await keel.timeline(run_id)
        assert types(timeline).count("run_started") == 1
        assert types(timeline).count("trigger_joined") == 9
        assert types(timeline).count("run_completed") == 1
    assert ledger_counts(stack.ledger_url, run_id) == {"invocations": 1, "effects": 1}


async def _status_is(keel, run_id: str, status: str) -> bool:
    view = await keel.run(run_id)
    return view is not None and view.status == status


async def test_a_router_killed_mid_run_finishes_it_after_restart_without_repeating_a_step(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("ledger3", {"delay": 1.0}, "router-crash")
        # Kill the router while the first write is in progress: its outcome arrives with no router up.
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["invocations"] >= 1)
        stack.kill("router")
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["effects"] >= 1)
        await stack.restart("router")
        await eventually(lambda: _status_is(keel, answer.run_id, "done"), timeout=90)
        timeline = await keel.timeline(answer.run_id)
    steps = [e.event.step_id for e in timeline if e.type == "step_scheduled"]
    assert steps == ["one", "two", "three"]
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 3, "effects": 3}


async def test_an_executor_killed_mid_step_is_replaced_and_the_write_happens_once(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("ledger3", {"delay": 2.0}, "executor-crash")
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["invocations"] >= 1)
        stack.kill("executor")  # mid-step: the invocation is recorded, the effect is not yet applied
        assert ledger_counts(stack.ledger_url, answer.run_id)["effects"] == 0
        await stack.restart("executor")
        await eventually(lambda: _status_is(keel, answer.run_id, "done"), timeout=120)
        timeline = await keel.timeline(answer.run_id)
    counts = ledger_counts(stack.ledger_url, answer.run_id)
    # The killed attempt was redelivered and ran again under the same idempotency key: two calls of the
    # first step, one effect per step.
    assert counts == {"invocations": 4, "effects": 3}, stack.logs()
    succeeded = [e.event.step_id for e in timeline if e.type == "step_succeeded"]
    assert succeeded == ["one", "two", "three"]
    first = next(e.event for e in timeline if e.type == "step_succeeded")
    assert first.body.output["replayed"] is False


async def test_a_malformed_trigger_is_dead_lettered_with_its_reason_and_the_next_trigger_still_runs(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack()
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        garbage = b'{"type": "trigger_run", "workflow": '
        await js.publish(s.trigger_subject("cli"), garbage, headers={"Nats-Msg-Id": "garbage-1"})
        wrong = build_trigger("demo", {}, "k").model_dump(mode="json")
        wrong["run_id"] = "rsomeoneelse"
        await js.publish(s.trigger_subject("cli"), json.dumps(wrong).encode(), headers={"Nats-Msg-Id": "wrong-1"})
        unknown = build_trigger("no-such-workflow", {}, "k")
        await js.publish(s.trigger_subject("cli"), unknown.model_dump_json().encode(), headers={"Nats-Msg-Id": "u-1"})

        async with await stack.client() as keel:
            answer = await keel.trigger("demo", {}, "after-garbage", wait=True)
            assert answer.status == "done"

        sub = await js.pull_subscribe(s.DLQ_ALL, stream=s.DLQ_STREAM)
        letters = {}
        while len(letters) < 3:
            for msg in await sub.fetch(10, timeout=10):
                letter = decode(DeadLetter, msg.data)
                letters[letter.message_id] = letter
        assert letters["garbage-1"].reason == "malformed_json"
        assert base64.b64decode(letters["garbage-1"].data_b64) == garbage  # kept byte for byte
        assert letters["wrong-1"].reason == "invalid" and "does not belong to this intent" in letters["wrong-1"].detail
        assert letters["u-1"].reason == "unknown_workflow" and "no-such-workflow" in letters["u-1"].detail
        assert all(letter.service == "router" for letter in letters.values())
        info = await js.consumer_info(s.COMMANDS_STREAM, s.ROUTER_TRIGGERS_DURABLE)
        assert info.num_ack_pending == 0 and info.num_pending == 0  # nothing stuck behind the bad input
    finally:
        await nc.close()


async def test_transient_failures_are_retried_by_durable_timers_then_caught(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        ok = await keel.trigger("flaky", {"fail_times": 2}, "flaky-ok", wait=True, timeout=90)
        assert ok.status == "done", stack.logs()
        assert ok.output is not None and ok.output["charged"] is True
        timeline = await keel.timeline(ok.run_id)
        assert types(timeline).count("retry_scheduled") == 2
        attempts = [e.event.attempt for e in timeline if e.type == "step_scheduled"]
        assert attempts == [1, 2, 3]
        keys = {e.event.body.idempotency_key for e in timeline if e.type == "step_scheduled"}
        assert len(keys) == 1  # every retry of a write carries the same idempotency key

        caught = await keel.trigger("flaky", {"fail_times": 5}, "flaky-caught", wait=True, timeout=90)
        assert caught.status == "failed"
        assert "charge_failed" in (caught.reason or "")
        timeline = await keel.timeline(caught.run_id)
        route = next(e.event for e in timeline if e.type == "route_decided")
        assert route.body.kind == "catch" and route.body.to_step == "give_up"
        assert route.body.writes["errors.charge"]["error"] == "transient"
    assert ledger_counts(stack.ledger_url, ok.run_id) == {"invocations": 3, "effects": 1}
