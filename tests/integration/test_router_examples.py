"""The three example workflows in workflows/ run end to end against the sandbox systems of record, with
the approval decision published as the approval service would."""

import pytest

from keel_sandbox.testing import SandboxProcess
from tests.conftest import StackFactory, StackHandle
from tests.integration.router_kit import approval_request, decide_approval, events_of, reaches

pytestmark = pytest.mark.integration


async def example_stack(keel_stack: StackFactory, sandbox: SandboxProcess) -> StackHandle:
    return await keel_stack(env={"KEEL_SANDBOX_URL": sandbox.base_url})


def slack(ts: str, email: str, text: str) -> dict[str, str]:
    return {"channel": "C042", "ts": ts, "user_email": email, "text": text}


async def test_slack_to_ticket_creates_one_ticket_enriched_from_the_crm_or_from_its_fallback(
    keel_stack: StackFactory, sandbox: SandboxProcess
) -> None:
    stack = await example_stack(keel_stack, sandbox)
    async with await stack.client() as keel:
        known = await keel.trigger(
            "slack_to_ticket", slack("1.1", "alice@acme.example", "The export is broken"), "C042-1.1", wait=True
        )
        unknown = await keel.trigger(
            "slack_to_ticket", slack("1.2", "zoe@nowhere.example", "Login error again"), "C042-1.2", wait=True
        )
        thanks = await keel.trigger(
            "slack_to_ticket", slack("1.3", "bob@acme.example", "thanks!"), "C042-1.3", wait=True
        )
        fallback = events_of(await keel.timeline(unknown.run_id), "route_decided")

    assert known.status == "done", stack.logs()
    assert known.output["ticket_id"].startswith("SUP-") and known.output["tier"] != "unknown"
    assert unknown.status == "done" and unknown.output["tier"] == "unknown"
    assert [r.body.kind for r in fallback] == ["decide", "catch"]  # the CRM did not know the author
    assert thanks.status == "done" and thanks.output == {"ignored": True}
    assert sandbox.count("tickets", run_id=known.run_id) == 1
    assert sandbox.count("tickets", run_id=unknown.run_id) == 1
    assert sandbox.count("tickets", run_id=thanks.run_id) == 0


async def test_refund_waits_for_finance_then_refunds_the_approved_amount_once(
    keel_stack: StackFactory, sandbox: SandboxProcess
) -> None:
    stack = await example_stack(keel_stack, sandbox)
    async with await stack.client() as keel:
        answer = await keel.trigger(
            "refund", {"charge_id": "1", "amount_cents": 1000, "reason": "damaged on arrival"}, "refund-ch1"
        )
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        assert request.body.roles == ["finance"]
        assert request.body.payload == {"charge_id": "1", "amount_cents": 1000, "reason": "requested_by_customer"}
        assert "alice" in request.body.summary and "damaged on arrival" in request.body.summary
        assert sandbox.count("billing_refunds", run_id=answer.run_id) == 0

        await decide_approval(stack, request, "granted", by="fin@example.com")
        view = await reaches(keel, answer.run_id, "done")
        too_much = await keel.trigger(
            "refund", {"charge_id": "1", "amount_cents": 999999, "reason": "all of it"}, "refund-too-much", wait=True
        )
    assert view.output["refund"]["amount_cents"] == 1000
    assert view.output["approved_by"] == ["fin@example.com"]
    assert sandbox.count("billing_refunds", run_id=answer.run_id) == 1
    assert too_much.status == "failed" and "amount_exceeds_charge" in (too_much.reason or "")


async def test_access_change_needs_security_approval_and_skips_a_grant_that_exists(
    keel_stack: StackFactory, sandbox: SandboxProcess
) -> None:
    stack = await example_stack(keel_stack, sandbox)
    async with await stack.client() as keel:
        request_input = {"user": "bob@acme.example", "group": "github:member", "justification": "onboarding to repos"}
        answer = await keel.trigger("access_change", request_input, "access-bob")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        assert request.body.roles == ["security"] and request.body.target.system == "access"
        await decide_approval(stack, request, "granted", by="sec@example.com")
        view = await reaches(keel, answer.run_id, "done")

        existing = {"user": "alice@acme.example", "group": "github:member", "justification": "already there"}
        skipped = await keel.trigger("access_change", existing, "access-alice", wait=True)
        prod = {"user": "bob@acme.example", "group": "prod-db:reader", "justification": "just curious"}
        refused = await keel.trigger("access_change", prod, "access-prod", wait=True)
    assert view.output["grant"]["role"] == "member"
    assert sandbox.count("access_grants", run_id=answer.run_id) == 1
    assert skipped.status == "done" and skipped.output == {"already_member": True}
    assert refused.status == "failed" and "missing_incident" in (refused.reason or "")
