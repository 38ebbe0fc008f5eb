"""The executor's last line of defence for approvals, on a real server: whatever schedules a step, a
write whose payload differs from the approved one, or that comes without the approval service's signed
grant of exactly it, is refused before the tool runs."""

import nats
import pytest

from keel_contracts import subjects as s
from keel_contracts.approvals import DecisionProof, payload_hash
from keel_contracts.codec import decode_event, encode
from keel_contracts.events import StepFailed, StepScheduled, StepScheduledBody, StepSucceeded
from keel_executor.tools.demo import ledger_counts
from keel_shared.schedules import sign_schedule
from keel_shared.signing import Signer
from tests.conftest import StackFactory, StackHandle, eventually, signed_grant

pytestmark = pytest.mark.integration

APPROVED = {"account": "acct-1", "amount": 100}


def scheduled(
    run_id: str, payload: dict, approved_hash: str, grants: list[DecisionProof] | None = None
) -> StepScheduled:
    return StepScheduled(
        run_id=run_id,
        workflow="demo",
        step_id="refund",
        attempt=1,
        correlation_id=run_id,
        actor="router",
        dedupe_key=f"{run_id}:refund:1:1:scheduled",
        body=StepScheduledBody(
            tool="demo.ledger",
            input=payload,
            idempotency_key=f"key-{run_id}",
            command_id=f"{run_id}:refund:1:1",
            timeout_seconds=10,
            reason="approved",
            side_effect="write",
            approval_ids=[f"{run_id}-approval"],
            approved_payload_hash=approved_hash,
            grants=grants or [],
        ),
    )


def real_grant(stack: StackHandle, run_id: str) -> DecisionProof:
    """The stack's approval service's grant of APPROVED for step `refund` of `run_id`."""
    return signed_grant(
        run_id=run_id,
        step_id="refund",
        payload=APPROVED,
        approval_id=f"{run_id}-approval",
        workflow="demo",
        signer=stack.decision_signer,
    )


async def schedule(js, event: StepScheduled) -> None:
    subject = s.event_subject(event.workflow, event.run_id, s.ROUTER, event.type)
    await js.publish(subject, encode(event), headers={"Nats-Msg-Id": event.dedupe_key})


async def outcome_of(js, run_id: str):
    stored = []

    async def fetch():
        sub = await js.subscribe(f"keel.run.demo.{run_id}.executor.*", stream=s.EVENTS_STREAM, ordered_consumer=True)
        try:
            msg = await sub.next_msg(timeout=1)
            stored.append(decode_event(msg.data))
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return stored

    await eventually(fetch, timeout=60)
    return stored[0]


async def test_a_write_whose_payload_changed_after_approval_is_refused_and_nothing_is_written(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack()
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        approved = payload_hash(APPROVED)
        changed = scheduled("rchanged", {**APPROVED, "amount": 100_000}, approved)
        await schedule(js, sign_schedule(stack.schedule_signer, changed))
        refused = await outcome_of(js, "rchanged")
        assert isinstance(refused, StepFailed)
        assert refused.body.error_class == "refused"
        assert approved in refused.body.message
        assert ledger_counts(stack.ledger_url, "rchanged") == {"invocations": 0, "effects": 0}

        # The payload that was approved, scheduled by the router, but no signed grant comes with it.
        await schedule(js, sign_schedule(stack.schedule_signer, scheduled("rbare", dict(APPROVED), approved)))
        bare = await outcome_of(js, "rbare")
        assert isinstance(bare, StepFailed) and "no signed grant" in bare.body.message
        assert ledger_counts(stack.ledger_url, "rbare") == {"invocations": 0, "effects": 0}

        # With the approval service's grant of exactly this write, it runs, once.
        grant = real_grant(stack, "rsame")
        await schedule(js, sign_schedule(stack.schedule_signer, scheduled("rsame", dict(APPROVED), approved, [grant])))
        assert isinstance(await outcome_of(js, "rsame"), StepSucceeded)
        assert ledger_counts(stack.ledger_url, "rsame") == {"invocations": 1, "effects": 1}
    finally:
        await nc.close()


async def test_a_write_the_router_did_not_sign_is_refused_whatever_it_claims(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        grant = real_grant(stack, "rforged")
        # Even with a real grant: a write under the router's token that the router did not sign.
        await schedule(js, scheduled("rforged", dict(APPROVED), payload_hash(APPROVED), [grant]))
        refused = await outcome_of(js, "rforged")
        assert isinstance(refused, StepFailed) and "not scheduled by the router" in refused.body.message
        signed_elsewhere = sign_schedule(Signer.generate(), scheduled("rother", dict(APPROVED), payload_hash(APPROVED)))
        await schedule(js, signed_elsewhere)
        other = await outcome_of(js, "rother")
        assert isinstance(other, StepFailed) and "does not hold" in other.body.message
        assert ledger_counts(stack.ledger_url, "rforged")["invocations"] == 0
        assert ledger_counts(stack.ledger_url, "rother")["invocations"] == 0
    finally:
        await nc.close()
