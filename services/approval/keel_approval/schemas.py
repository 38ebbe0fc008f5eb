"""The HTTP API's request and response bodies (these make the OpenAPI document)."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue

from keel_approval.diff import Change
from keel_approval.records import ApprovalRecord
from keel_approval.writes import WriteOutcome


class ErrorOut(BaseModel):
    error: str = Field(description="Stable code, e.g. role_mismatch, requester_cannot_decide, already_decided")
    detail: str


class ApproverOut(BaseModel):
    name: str
    roles: list[str]


class TargetOut(BaseModel):
    system: str
    operation: str
    record: str | None = None
    link: str | None = None


class VoteOut(BaseModel):
    approver: str
    role: str
    at: datetime
    reason: str


class HistoryOut(BaseModel):
    what: str
    who: str
    at: datetime
    why: str


class WriteOut(BaseModel):
    state: Literal["written", "failed", "not_sent", "pending"] = Field(
        description="What happened to the write the grant unlocked, read from the run's events"
    )
    detail: str
    at: datetime | None


class DiffLineOut(BaseModel):
    path: str
    change: Change
    before: JsonValue | None
    after: JsonValue | None


class ApprovalSummary(BaseModel):
    approval_id: str
    status: Literal["pending", "approved", "denied", "expired", "escalated", "superseded", "withdrawn"]
    workflow: str
    run_id: str
    step_id: str | None = Field(description="The approval step of the run that asked")
    approves_step: str = Field(description="The write step this approval unlocks")
    tool: str
    roles: list[str]
    quorum: int
    target: TargetOut
    summary: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    payload_hash: str
    approvals: int = Field(description="Approvals cast so far (towards the quorum)")

    @classmethod
    def of(cls, record: ApprovalRecord) -> "ApprovalSummary":
        return cls(
            approval_id=record.approval_id,
            status=record.status.value,
            workflow=record.workflow,
            run_id=record.run_id,
            step_id=record.step_id,
            approves_step=record.approves_step,
            tool=record.tool,
            roles=list(record.roles),
            quorum=record.quorum,
            target=TargetOut.model_validate(record.target),
            summary=record.summary,
            requested_by=record.requested_by,
            requested_at=record.requested_at,
            expires_at=record.expires_at,
            payload_hash=record.payload_hash,
            approvals=len(record.votes),
        )


class ApprovalDetail(ApprovalSummary):
    payload: dict[str, JsonValue] = Field(description="The exact payload the write will send")
    before: dict[str, JsonValue] | None = Field(description="The record before the write, when known")
    diff: list[DiffLineOut]
    evidence: dict[str, JsonValue]
    reason: str = Field(description="Why the router asked for approval (the routing reason)")
    escalate_to: str | None
    correlation_id: str
    decided_at: datetime | None
    decided_by: list[str]
    decided_roles: list[str]
    decision_reason: str | None
    superseded_by: str | None
    votes: list[VoteOut]
    history: list[HistoryOut]
    published: bool = Field(description="Whether the decision event is in the stream yet")
    write: WriteOut | None = Field(None, description="For a granted approval: whether its write happened")

    @classmethod
    def of(cls, record: ApprovalRecord, write: WriteOutcome | None = None) -> "ApprovalDetail":
        return cls(
            **ApprovalSummary.of(record).model_dump(),
            payload=record.payload,
            before=record.before,
            diff=[DiffLineOut(path=d.path, change=d.change, before=d.before, after=d.after) for d in record.diff],
            evidence=record.evidence,
            reason=record.reason,
            escalate_to=record.escalate_to,
            correlation_id=record.correlation_id,
            decided_at=record.decided_at,
            decided_by=list(record.decided_by),
            decided_roles=list(record.decided_roles),
            decision_reason=record.decision_reason,
            superseded_by=record.superseded_by,
            votes=[VoteOut(approver=v.approver, role=v.role, at=v.at, reason=v.reason) for v in record.votes],
            history=[HistoryOut(what=h.what, who=h.who, at=h.at, why=h.why) for h in record.history()],
            published=record.published,
            write=None if write is None else WriteOut(state=write.state, detail=write.detail, at=write.at),
        )


class ApprovalList(BaseModel):
    approver: ApproverOut
    approvals: list[ApprovalSummary]


class ApproveIn(BaseModel):
    payload_hash: Annotated[str, Field(max_length=80)] = Field(
        description="The payload_hash of the request as the approver saw it: the approval binds to it"
    )
    reason: Annotated[str, Field(max_length=4096)] = ""
    role: Annotated[str, Field(max_length=128)] | None = Field(
        None, description="Which requested role to approve as (default: one not yet covered)"
    )


class DenyIn(BaseModel):
    payload_hash: Annotated[str, Field(max_length=80)]
    reason: Annotated[str, Field(min_length=1, max_length=4096)] = Field(description="Required: why not")
    role: Annotated[str, Field(max_length=128)] | None = None


class DecisionOut(BaseModel):
    approval_id: str
    status: Literal["pending", "approved", "denied", "expired", "escalated", "superseded", "withdrawn"]
    settled: bool = Field(description="False when the approval counted towards a quorum not yet reached")
    event: Literal["approval_granted", "approval_denied"] | None
    payload_hash: str
    decided_by: list[str]
    approvals: int
    published: bool
