"""The decision events the approval service emits, built from the request they answer.

Every decision of one approval shares one dedupe key and a message id derived from it: whatever the
outcome, the stream can hold only one decision per approval inside the dedupe window, and re-publishing
the stored outbox copy after a crash is a harmless duplicate.
"""

import hashlib
from datetime import datetime
from typing import Any

from keel_approval.domain import Decision
from keel_approval.records import ApprovalRecord
from keel_contracts import subjects as s
from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalExpiredBody,
    ApprovalGranted,
)
from keel_contracts.envelope import Message
from keel_shared.decisions import sign_decision
from keel_shared.signing import Signer

DecisionEvent = ApprovalGranted | ApprovalDenied | ApprovalExpired


def approval_key(approval_id: str) -> str:
    """A subject-safe token for an approval id (ids are free text up to 512 characters)."""
    return hashlib.sha256(approval_id.encode()).hexdigest()[:32]


def decision_dedupe_key(record: ApprovalRecord) -> str:
    return f"{record.run_id}:approval:{approval_key(record.approval_id)}:decided"


def _envelope(record: ApprovalRecord, now: datetime) -> dict[str, Any]:
    dedupe = decision_dedupe_key(record)
    return {
        "id": hashlib.sha256(dedupe.encode()).hexdigest()[:32],
        "run_id": record.run_id,
        "workflow": record.workflow,
        "tenant": record.tenant,
        "step_id": record.step_id,
        "correlation_id": record.correlation_id,
        "causation_id": record.request_event_id,
        "actor": s.APPROVAL,
        "dedupe_key": dedupe,
        "occurred_at": now,
    }


def decision_event(record: ApprovalRecord, decision: Decision, signer: Signer) -> ApprovalGranted | ApprovalDenied:
    """The decision event, signed by the approval service's key over the write it decides (decision 026)."""
    body = ApprovalDecisionBody(
        approval_id=record.approval_id,
        payload_hash=record.payload_hash,
        decided_by=[v.approver for v in decision.votes],
        roles=[v.role for v in decision.votes],
        # A grant's reason is the settling vote's note; a denial's is its (required) reason.
        reason=decision.vote.reason,
        decided_at=decision.vote.at,
    )
    env = _envelope(record, decision.vote.at)
    if decision.kind == "granted":
        return sign_decision(signer, ApprovalGranted(**env, body=body), record.approves_step)
    if decision.kind == "denied":
        return sign_decision(signer, ApprovalDenied(**env, body=body), record.approves_step)
    raise ValueError(f"a {decision.kind} does not settle the request")


def expired_event(record: ApprovalRecord, now: datetime) -> ApprovalExpired:
    return ApprovalExpired(
        **_envelope(record, now),
        body=ApprovalExpiredBody(approval_id=record.approval_id, expired_at=now, escalate_to=record.escalate_to),
    )


def as_message(doc: dict[str, Any]) -> Message:
    """An outbox entry back as its typed event."""
    kind = doc.get("type")
    model: type[Message] = {
        "approval_granted": ApprovalGranted,
        "approval_denied": ApprovalDenied,
        "approval_expired": ApprovalExpired,
    }[str(kind)]
    return model.model_validate(doc)
