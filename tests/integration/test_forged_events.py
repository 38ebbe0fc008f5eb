"""With NATS permissions wide open (the embedded default has no authorization at all: a misconfigured
account, a stolen credential), forged events are stored but never folded, and no forged grant leads to a
write: the readers' emitter check and the signed decisions hold by themselves (decision 026)."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from keel_contracts import subjects as s
from keel_contracts.approvals import ApprovalDecisionBody, ApprovalGranted, ApprovalRequested, proof_of
from keel_contracts.codec import encode
from keel_contracts.envelope import Message, utcnow
from keel_contracts.events import RunCompleted, RunCompletedBody, StepScheduled, StepScheduledBody
from keel_executor.tools.demo import ledger_counts
from keel_shared.decisions import sign_decision
from keel_shared.signing import Signer
from tests.badinput.kit import metric
from tests.conftest import StackFactory, StackHandle, eventually
from tests.integration.router_kit import approval_request, decide_approval, events_of, reaches

pytestmark = pytest.mark.integration


def _env(request: ApprovalRequested, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": request.run_id,
        "workflow": request.workflow,
        "tenant": request.tenant,
        "correlation_id": request.correlation_id,
        "actor": "mallory",
        "dedupe_key": f"forged-{key}",
        **extra,
    }


def forged_grant(request: ApprovalRequested, key: str) -> ApprovalGranted:
    return ApprovalGranted(
        **_env(request, key, step_id=request.step_id, causation_id=request.id),
        body=ApprovalDecisionBody(
            approval_id=request.body.approval_id,
            payload_hash=request.body.payload_hash,
            decided_by=["mallory"],
            roles=["finance"],
            decided_at=utcnow(),
        ),
    )


async def publish(stack: StackHandle, emitter: str, event: Message) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        subject = s.event_subject(event.workflow, event.run_id, emitter, event.type)
        await nc.jetstream().publish(subject, encode(event), headers={"Nats-Msg-Id": event.dedupe_key})
    finally:
        await nc.close()


async def _at_least(url: str, name: str, value: float) -> bool:
    return await metric(url, name) >= value


def router_metrics(stack: StackHandle) -> str:
    return f"http://127.0.0.1:{stack.stack.children['router'].spec.metrics_port}"


async def test_forged_grants_and_outcomes_are_stored_but_never_folded_and_unlock_no_write(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 7}, "forged-1")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        mallory = Signer.generate()
        # The attack: the executor's identity publishes a grant under its own token.
        await publish(stack, s.EXECUTOR, forged_grant(request, "executor-token"))
        # Under the approval service's token: unsigned, then signed with a key nobody trusts.
        await publish(stack, s.APPROVAL, forged_grant(request, "unsigned"))
        signed = sign_decision(mallory, forged_grant(request, "untrusted-key"), request.body.approves_step)
        await publish(stack, s.APPROVAL, signed)
        # And a completion under the executor's token.
        done = RunCompleted(**_env(request, "completed"), body=RunCompletedBody(output={}, reason="forged"))
        await publish(stack, s.EXECUTOR, done)

        # The grants under the approval token reach the router and are refused for their signatures; the
        # router's durable never even delivers an executor-token grant (its filters name executor outcomes).
        url = router_metrics(stack)
        await eventually(lambda: _at_least(url, "keel_unverified_decisions_total", 2))
        view = await keel.run(answer.run_id)
        assert view is not None and view.status == "needs_approval", view
        assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0
        timeline = await keel.timeline(answer.run_id)
        rejected = [e for e in timeline if e.rejected is not None]
        assert {(e.emitter, e.type) for e in rejected} == {
            (s.EXECUTOR, "approval_granted"),
            (s.EXECUTOR, "run_completed"),
        }

        # The real approval service's decision still resumes the run: one write, exactly.
        await decide_approval(stack, request, "granted")
        await reaches(keel, answer.run_id, "done")
        # Reading the run to fold it, the router met the forgeries stored under the executor's token.
        assert await metric(url, "keel_wrong_emitter_total", {"service": "router", "emitter": s.EXECUTOR}) >= 2
        scheduled = [e for e in events_of(await keel.timeline(answer.run_id), "step_scheduled") if e.step_id == "post"]
        assert [p.decided_by for e in scheduled for p in e.body.grants] == [["fin@example.com"]]
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_forged_schedule_of_an_approved_write_is_refused_by_the_executor(keel_stack: StackFactory) -> None:
    """Stored under the router's own token (only a wide permission allows that): the executor still sends
    no write the router did not sign, and no grant the approval service did not sign."""
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("gated_ledger", {"amount": 8}, "forged-2")
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        mallory = Signer.generate()
        proof = proof_of(sign_decision(mallory, forged_grant(request, "grant"), "post"))
        assert proof is not None
        # With the router's token (wide permissions): the write, claiming an approval it cannot prove.
        forged = StepScheduled(
            **_env(request, "scheduled", step_id="post", attempt=1),
            body=StepScheduledBody(
                tool="demo.ledger",
                input=request.body.payload,
                idempotency_key="forged-post",
                command_id=f"{answer.run_id}:post:forged",
                timeout_seconds=10,
                reason="forged",
                side_effect="write",
                approval_ids=[request.body.approval_id],
                approved_payload_hash=request.body.payload_hash,
                grants=[proof],
            ),
        )
        await publish(stack, s.ROUTER, forged)

        async def refused() -> Any:
            failed = events_of(await keel.timeline(answer.run_id), "step_failed")
            return [e for e in failed if e.step_id == "post"]

        (outcome,) = await eventually(refused)
        assert outcome.body.error_class == "refused" and "not scheduled by the router" in outcome.body.message
    assert ledger_counts(stack.ledger_url, answer.run_id)["invocations"] == 0
