"""Approval gates: an approval step asking for a write's exact payload, and the gate the router puts in
front of every write whose policy or workflow demands approval.

The rule at a write: it runs only with unused grants that bind to the hash of the payload it is about to
send, one for each role the policy names for its action classes, and one from the role of an approval
step that gates it in the workflow. A payload that changed since it was approved, or a path around the
approval step, makes the router ask again instead of running the write.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from keel_contracts.approvals import (
    ApprovalRequested,
    ApprovalRequestedBody,
    ApprovalTarget,
    ApprovalWithdrawn,
    ApprovalWithdrawnBody,
    DecisionProof,
    payload_hash,
)
from keel_contracts.envelope import Message
from keel_router.aggregate import Approval, RunState
from keel_router.emit import Emitter, shown_context
from keel_router.workflow.models import ApprovalStep, ToolStep, Workflow
from keel_router.workflow.policy import Policy, required_approval
from keel_router.workflow.templating import render

#: How long a gate the router inserts by policy waits for a decision (an approval step sets its own).
POLICY_GATE_EXPIRY_SECONDS = 24 * 3600


def render_payload(step: ToolStep, ctx: dict[str, Any]) -> dict[str, JsonValue]:
    """The exact input a write step sends (raises RunDataError when run data is missing)."""
    rendered = render(step.input, ctx)
    return rendered if isinstance(rendered, dict) else {"value": rendered}


@dataclass(frozen=True)
class GateOpen:
    """The write may run: these grants approve its payload."""

    approval_ids: tuple[str, ...]
    payload_hash: str
    grants: tuple[DecisionProof, ...] = ()


@dataclass(frozen=True)
class GateClosed:
    """The write needs (another) approval from `role` before it runs."""

    role: str
    reason: str


def check_gate(
    state: RunState, workflow: Workflow, step: ToolStep, payload: dict[str, JsonValue], policy: Policy
) -> GateOpen | GateClosed | None:
    """None when nothing demands approval of this write."""
    requirement = required_approval(step, policy)
    gating = workflow.approvals_for(step.id)
    if requirement is None and not gating:
        return None
    digest = payload_hash(payload)
    usable = [
        a
        for a in state.approvals
        if a.approves_step == step.id and a.status == "granted" and not a.consumed and _binds(a, digest)
    ]
    roles = {a.role for a in usable}
    if gating and not roles & {g.role for g in gating}:
        earlier = [a for a in state.approvals if a.approves_step == step.id and a.status == "granted"]
        if any(not _binds(a, digest) for a in earlier if not a.consumed):
            why = f"the approval held for {step.id} binds to another payload than the one it sends now ({digest})"
        else:
            why = f"{step.id} is gated by approval step {gating[0].id} and holds no approval of this payload"
        return GateClosed(gating[0].role, why)
    if requirement is not None:
        for role in requirement.roles:
            if role not in roles:
                return GateClosed(role, requirement.reason)
    return GateOpen(tuple(a.approval_id for a in usable), digest, tuple(a.proof for a in usable if a.proof is not None))


def _binds(approval: Approval, digest: str) -> bool:
    # The decision must bind to the very hash the router asked for and the write is about to send.
    return approval.payload_hash == digest and approval.decided_payload_hash in (None, digest)


def request_approval(
    em: Emitter,
    state: RunState,
    *,
    asking_step: str,
    write: ToolStep,
    payload: dict[str, JsonValue],
    role: str,
    summary: str,
    reason: str,
    expires_after_seconds: float,
    escalate_to: str | None,
    ctx: dict[str, Any],
    causation_id: str | None,
) -> Message:
    number = len(state.approvals) + 1
    approval_id = f"{state.run_id}-{asking_step}-{number}"
    system, _, operation = write.tool.partition(".")
    evidence: dict[str, JsonValue] = {
        "why": reason,
        "action_class": list(write.action_class),
        "risk": write.risk,
        "run_data": shown_context(ctx),
    }
    return ApprovalRequested(
        **em.env(state, f"{state.run_id}:approval:{approval_id}", causation_id, step_id=asking_step),
        body=ApprovalRequestedBody(
            approval_id=approval_id,
            roles=[role],
            approves_step=write.id,
            tool=write.tool,
            payload=payload,
            payload_hash=payload_hash(payload),
            target=ApprovalTarget(system=system, operation=operation or write.tool),
            summary=summary[:4096],
            evidence=evidence,
            reason=f"{reason}; waiting for {role} to approve {write.tool}"[:1024],
            # The person or agent who triggered the run asked for this write: they may not approve it.
            requested_by=state.triggered_by or f"{em.actor}:{state.run_id}",
            expires_at=em.clock() + timedelta(seconds=expires_after_seconds),
            escalate_to=escalate_to,
        ),
    )


def approval_result(approval: Approval) -> dict[str, JsonValue]:
    """What an approval step stores at its result path."""
    return {
        "approval_id": approval.approval_id,
        "status": approval.status,
        "role": approval.role,
        "decided_by": list(approval.decided_by),
        "roles": list(approval.decided_roles),
        "reason": approval.decision_reason,
        "payload_hash": approval.payload_hash,
    }


def describe_decision(approval: Approval) -> str:
    who = ", ".join(approval.decided_by) or "nobody"
    match approval.status:
        case "granted":
            return (
                f"approval {approval.approval_id} granted by {who} ({approval.role}) "
                f"for payload {approval.payload_hash}"
            )
        case "denied":
            why = f": {approval.decision_reason}" if approval.decision_reason else ""
            return f"approval {approval.approval_id} denied by {who} ({approval.role}){why}"
        case _:
            return f"approval {approval.approval_id} ({approval.role}) expired undecided"


def approval_step_target(step: ApprovalStep, approval: Approval, workflow: Workflow) -> tuple[str | None, bool]:
    """Where an approval step goes after its decision, and whether that is a defined route (False: the
    run fails, as a denial without `on_reject` does)."""
    if approval.status == "granted":
        return workflow.next_of(step), True
    if approval.status == "denied":
        return step.on_reject, step.on_reject is not None
    return step.escalate_to, True


#: Events that end a run: whatever approval it still waits for can no longer be used.
_ENDINGS = ("run_completed", "run_failed", "run_cancelled")


def withdrawals(em: Emitter, state: RunState | None, events: Sequence[Message]) -> list[Message]:
    """An `approval_withdrawn` for every request still pending when `events` end the run, so the approval
    service stops offering it: nobody can approve a write that will never happen (decision 026)."""
    ending = next((e for e in events if e.type in _ENDINGS), None)
    if state is None or ending is None:
        return []
    return [
        ApprovalWithdrawn(
            **em.env(state, f"{state.run_id}:approval:{a.approval_id}:withdrawn", ending.id, step_id=a.step_id),
            body=ApprovalWithdrawnBody(
                approval_id=a.approval_id,
                because=ending.type,
                reason=f"the run ended ({ending.type}) before the approval was decided"[:1024],
            ),
        )
        for a in state.approvals
        if a.status == "pending"
    ]
