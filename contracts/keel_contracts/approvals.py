"""Approval events: a write waits for a named role to approve its exact payload.

The router emits `approval_requested` when a run reaches an approval gate (a workflow's approval step,
or a policy that says the write's action class always needs one). The approval service records it,
shows it to approvers, and emits the decision on the run's subject with emitter `approval`. The
decision binds to `payload_hash`: approving unlocks that exact write once; a changed payload needs a
new approval.
"""

import hashlib
import json
from datetime import UTC
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue

from keel_contracts.envelope import Body, KeyText, Message, ShortText, Token

#: Largest payload (canonical JSON bytes) one approval request may carry unless KEEL_MAX_APPROVAL_PAYLOAD_BYTES
#: says otherwise: a person has to read what they approve, and the request, with its evidence, has to fit
#: one message.
DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES = 64 * 1024


def _canonical(payload: JsonValue) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def payload_hash(payload: JsonValue) -> str:
    """SHA-256 of the canonical JSON of a payload (sorted keys, no whitespace, UTF-8): what an
    approval binds to. Every service computes it with this function."""
    return "sha256:" + hashlib.sha256(_canonical(payload)).hexdigest()


def approval_payload_bytes(payload: JsonValue) -> int:
    """The size the approval payload limit is measured in: the bytes its hash is computed over."""
    return len(_canonical(payload))


class ApprovalTarget(Body):
    """Where the write goes: the system of record, the operation and, if known, the record."""

    system: Annotated[str, Field(max_length=128)]
    operation: Annotated[str, Field(max_length=128)]
    record: Annotated[str, Field(max_length=512)] | None = None
    link: Annotated[str, Field(max_length=2048)] | None = None


class ApprovalRequestedBody(Body):
    approval_id: KeyText
    roles: Annotated[list[Token], Field(min_length=1, max_length=8)]
    # How many distinct approvers holding a role must approve (N of M).
    quorum: Annotated[int, Field(ge=1, le=10)] = 1
    approves_step: Token
    tool: Annotated[str, Field(max_length=128)]
    payload: dict[str, JsonValue]
    payload_hash: Annotated[str, Field(max_length=80)]
    # The current payload of the same record before the write, when the workflow can read it: lets the
    # inbox show a diff instead of only the new payload.
    before: dict[str, JsonValue] | None = None
    target: ApprovalTarget
    summary: Annotated[str, Field(max_length=4096)]
    evidence: dict[str, JsonValue] = Field(default_factory=dict)
    reason: ShortText
    requested_by: Annotated[str, Field(max_length=256)]
    expires_at: AwareDatetime
    escalate_to: Token | None = None


class ApprovalRequested(Message):
    type: Literal["approval_requested"] = "approval_requested"
    body: ApprovalRequestedBody


SignatureText = Annotated[str, Field(max_length=128)]


class ApprovalDecisionBody(Body):
    approval_id: KeyText
    payload_hash: Annotated[str, Field(max_length=80)]
    # Who decided (authenticated approver identity) and with which of the requested roles.
    decided_by: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=10)]
    roles: Annotated[list[Token], Field(max_length=10)]
    reason: Annotated[str, Field(max_length=4096)] = ""
    decided_at: AwareDatetime
    # The write the decision is about, and the approval service's Ed25519 signature over the decision
    # (`DecisionProof.statement`): a grant unlocks a write only where this verifies (decision 026).
    approves_step: Token | None = None
    key_id: Annotated[str, Field(max_length=64)] | None = None
    signature: SignatureText | None = None


class DecisionProof(Body):
    """An approval decision as the approval service signed it: every field the signature covers, and the
    signature. The router checks it before a grant unlocks anything; the step it schedules carries it, so
    the executor checks it again right before the write (decision 026)."""

    run_id: Token
    workflow: Token
    tenant: Token
    decision: Literal["granted", "denied"]
    approval_id: KeyText
    approves_step: Token
    payload_hash: Annotated[str, Field(max_length=80)]
    decided_by: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=10)]
    decided_at: AwareDatetime
    key_id: Annotated[str, Field(max_length=64)]
    signature: SignatureText = ""

    def statement(self) -> bytes:
        """The bytes signed: a labelled, canonical JSON document of every field but the signature."""
        doc = self.model_dump(mode="json", exclude={"signature"})
        doc["decided_at"] = self.decided_at.astimezone(UTC).isoformat(timespec="microseconds")
        doc["statement"] = DECISION_STATEMENT
        return _canonical(doc)


#: Labels what a decision signature means, so no other signed Keel document can pass for one.
DECISION_STATEMENT = "keel-approval-decision/v1"


class ApprovalGranted(Message):
    type: Literal["approval_granted"] = "approval_granted"
    body: ApprovalDecisionBody


class ApprovalDenied(Message):
    """A denial always carries a reason."""

    type: Literal["approval_denied"] = "approval_denied"
    body: ApprovalDecisionBody


def unsigned_proof(event: "ApprovalGranted | ApprovalDenied", key_id: str, approves_step: str) -> DecisionProof:
    """The statement a decision event is signed over (before its signature exists)."""
    body = event.body
    return DecisionProof(
        run_id=event.run_id,
        workflow=event.workflow,
        tenant=event.tenant,
        decision="granted" if isinstance(event, ApprovalGranted) else "denied",
        approval_id=body.approval_id,
        approves_step=approves_step,
        payload_hash=body.payload_hash,
        decided_by=list(body.decided_by),
        decided_at=body.decided_at,
        key_id=key_id,
    )


def proof_of(event: "ApprovalGranted | ApprovalDenied") -> DecisionProof | None:
    """The signed proof a decision event carries, or None when it carries no signature at all."""
    body = event.body
    if body.key_id is None or body.signature is None or body.approves_step is None:
        return None
    return unsigned_proof(event, body.key_id, body.approves_step).model_copy(update={"signature": body.signature})


class ApprovalExpiredBody(Body):
    approval_id: KeyText
    expired_at: AwareDatetime
    escalate_to: Token | None = None


class ApprovalExpired(Message):
    type: Literal["approval_expired"] = "approval_expired"
    body: ApprovalExpiredBody


class ApprovalWithdrawnBody(Body):
    approval_id: KeyText
    # The run's end that withdrew the request: run_cancelled, run_failed or run_completed.
    because: Annotated[str, Field(max_length=64)]
    reason: ShortText


class ApprovalWithdrawn(Message):
    """The run that asked ended (cancelled, failed, finished) before anyone decided: the request is no
    longer decidable. Emitted by the router in the transition that ends the run."""

    type: Literal["approval_withdrawn"] = "approval_withdrawn"
    body: ApprovalWithdrawnBody


APPROVAL_DECISION_TYPES = ("approval_granted", "approval_denied", "approval_expired")
