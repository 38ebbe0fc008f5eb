"""Builders for the events other services and people send into a parked run: approval decisions (as
the approval service emits them) and router commands (as `keel run input` / `keel run cancel` send them)."""

from __future__ import annotations

from pydantic import JsonValue
from router_testkit import T0

from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalExpiredBody,
    ApprovalGranted,
    ApprovalRequested,
)
from keel_contracts.commands import CancelRun, CancelRunBody, HumanInput, HumanInputBody
from keel_contracts.envelope import Message
from keel_router.aggregate import RunState
from keel_shared.decisions import sign_decision
from tests.conftest import TEST_DECISION_SIGNER


def _env(state: RunState, request: ApprovalRequested, suffix: str) -> dict[str, object]:
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "tenant": state.tenant,
        "step_id": request.step_id,
        "correlation_id": state.correlation_id,
        "causation_id": request.id,
        "actor": "approval",
        "dedupe_key": f"{request.body.approval_id}:{suffix}",
        "occurred_at": T0,
    }


def decision(
    state: RunState,
    request: ApprovalRequested,
    kind: str = "granted",
    *,
    by: str = "alice@example.com",
    reason: str = "",
    payload_hash: str | None = None,
) -> Message:
    """The approval service's decision on `request`, binding to its payload hash unless told otherwise."""
    if kind == "expired":
        return ApprovalExpired(
            **_env(state, request, "expired"),
            body=ApprovalExpiredBody(
                approval_id=request.body.approval_id, expired_at=T0, escalate_to=request.body.escalate_to
            ),
        )
    body = ApprovalDecisionBody(
        approval_id=request.body.approval_id,
        payload_hash=payload_hash or request.body.payload_hash,
        decided_by=[by],
        roles=list(request.body.roles),
        reason=reason,
        decided_at=T0,
    )
    cls = ApprovalGranted if kind == "granted" else ApprovalDenied
    # Signed as the approval service signs (the repository verifies it before the engine sees it).
    return sign_decision(TEST_DECISION_SIGNER, cls(**_env(state, request, kind), body=body), request.body.approves_step)


def human_input(
    state: RunState, data: dict[str, JsonValue], *, cmd_id: str = "cmd-1", step_id: str | None = None
) -> HumanInput:
    return HumanInput(
        id=cmd_id,
        run_id=state.run_id,
        workflow=state.workflow,
        correlation_id=cmd_id,
        actor="human:ops",
        dedupe_key=f"input:{cmd_id}",
        body=HumanInputBody(input=data, submitted_by="ops@example.com", step_id=step_id),
    )


def cancel(state: RunState, cmd_id: str = "cancel-1") -> CancelRun:
    return CancelRun(
        id=cmd_id,
        run_id=state.run_id,
        workflow=state.workflow,
        correlation_id=cmd_id,
        actor="human:ops",
        dedupe_key=f"cancel:{cmd_id}",
        body=CancelRunBody(reason="wrong customer", requested_by="ops@example.com"),
    )


def last_of(events: list[Message], cls: type) -> Message:
    return next(e for e in reversed(events) if isinstance(e, cls))
