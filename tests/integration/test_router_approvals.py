"""Approval gates on a real nats-server: the router asks for the exact payload, parks the run in
needs_approval, and resumes on the approval service's decision event (published here directly)."""

import pytest

from keel_contracts.approvals import payload_hash
from keel_executor.tools.demo import ledger_counts
from tests.conftest import StackFactory, eventually
from tests.integration.router_kit import approval_request, decide_approval, events_of, reaches, types

pytestmark = pytest.mark.integration


async def test_a_gated_write_waits_for_approval_and_runs_with_the_approved_payload_hash(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 3}, "gated-1")
        view = await reaches(keel, answer.run_id, "needs_approval")
        assert view.current_step == "approve"
        request = await approval_request(keel, answer.run_id)
        assert request.body.payload == {"account": "gated", "amount": 3}
        assert request.body.payload_hash == payload_hash(request.body.payload)
        assert request.body.roles == ["finance"] and request.body.escalate_to == "escalated"
        assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0

        await decide_approval(stack, request, "granted")
        await reaches(keel, answer.run_id, "done")
        timeline = await keel.timeline(answer.run_id)
    scheduled = [e for e in events_of(timeline, "step_scheduled") if e.step_id == "post"]
    assert [e.body.approval_ids for e in scheduled] == [[request.body.approval_id]]
    assert scheduled[0].body.approved_payload_hash == request.body.payload_hash
    route = next(e for e in events_of(timeline, "route_decided") if e.body.kind == "approval")
    assert "granted by fin@example.com" in route.body.why
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_denied_approval_follows_on_reject_and_the_write_never_runs(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 4}, "gated-deny")
        await reaches(keel, answer.run_id, "needs_approval")
        await decide_approval(stack, await approval_request(keel, answer.run_id), "denied", reason="no")
        view = await reaches(keel, answer.run_id, "failed")
        assert "rejected" in view.reason
        timeline = await keel.timeline(answer.run_id)
    assert "post" not in [e.step_id for e in events_of(timeline, "step_scheduled")]
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 0, "effects": 0}


async def test_an_expired_approval_escalates(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 4}, "gated-expire")
        await reaches(keel, answer.run_id, "needs_approval")
        await decide_approval(stack, await approval_request(keel, answer.run_id), "expired")
        view = await reaches(keel, answer.run_id, "failed")
        assert "approval_expired" in view.reason
    assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0


async def test_the_policy_gates_a_money_write_that_has_no_approval_step(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("policy_ledger", {"amount": 9}, "policy-1")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        assert request.step_id == "post" and request.body.roles == ["finance"]
        assert "policy requires approval" in request.body.reason
        assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0

        await decide_approval(stack, request, "granted")
        await reaches(keel, answer.run_id, "done")
        timeline = await keel.timeline(answer.run_id)
    assert types(timeline).count("approval_requested") == 1
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_decision_delivered_twice_resumes_the_run_once(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 2}, "gated-twice")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        await decide_approval(stack, request, "granted")
        await decide_approval(stack, request, "granted")  # deduplicated, or ignored when late
        await reaches(keel, answer.run_id, "done")
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["effects"] == 1)
        timeline = await keel.timeline(answer.run_id)
    assert [e.step_id for e in events_of(timeline, "step_scheduled")] == ["prepare", "post"]
