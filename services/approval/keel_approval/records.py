"""Read models: what the API, the inbox and the CLI show about one approval."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keel_approval.diff import DiffLine, diff
from keel_approval.domain import ApprovalState, Status, Vote
from keel_approval.models import ApprovalRow, VoteRow


@dataclass(frozen=True)
class HistoryEntry:
    """One step of an approval's lifecycle: what happened, who did it, when and why."""

    what: str
    who: str
    at: datetime
    why: str = ""


@dataclass(frozen=True)
class ApprovalRecord:
    approval_id: str
    tenant: str
    workflow: str
    run_id: str
    step_id: str | None
    correlation_id: str
    request_event_id: str
    approves_step: str
    tool: str
    roles: tuple[str, ...]
    quorum: int
    payload: dict[str, Any]
    payload_hash: str
    before: dict[str, Any] | None
    target: dict[str, Any]
    summary: str
    evidence: dict[str, Any]
    reason: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    escalate_to: str | None
    status: Status
    decided_at: datetime | None
    decided_by: tuple[str, ...]
    decided_roles: tuple[str, ...]
    decision_reason: str | None
    superseded_by: str | None
    published: bool
    votes: tuple[Vote, ...] = field(default_factory=tuple)

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING

    @property
    def diff(self) -> list[DiffLine]:
        return diff(self.before, self.payload) if self.before is not None else []

    @property
    def target_link(self) -> str | None:
        """The record link, only when it is plain http(s): anything else (`javascript:`, `data:`) is
        shown as text, never made clickable."""
        link = self.target.get("link")
        if isinstance(link, str) and link.lower().startswith(("https://", "http://")):
            return link
        return None

    def state(self) -> ApprovalState:
        return ApprovalState(
            approval_id=self.approval_id,
            roles=self.roles,
            quorum=self.quorum,
            payload_hash=self.payload_hash,
            requested_by=self.requested_by,
            expires_at=self.expires_at,
            status=self.status,
            votes=self.votes,
            superseded_by=self.superseded_by,
        )

    def history(self) -> list[HistoryEntry]:
        out = [HistoryEntry("requested", self.requested_by, self.requested_at, self.reason)]
        final = self.status in (Status.APPROVED, Status.DENIED)
        for vote in self.votes:
            # The vote that settled the request is shown as the decision itself.
            if final and self.decided_at == vote.at and vote.approver in self.decided_by:
                continue
            out.append(HistoryEntry(f"approved as {vote.role}", vote.approver, vote.at, vote.reason))
        if self.decided_at is not None and self.status is not Status.PENDING:
            who = ", ".join(self.decided_by) or "approval service"
            why = self.decision_reason or ""
            if self.status is Status.SUPERSEDED:
                who, why = "router", f"superseded by {self.superseded_by}"
            elif self.status is Status.WITHDRAWN:
                who = "router"
            elif self.status is Status.ESCALATED:
                why = f"expired undecided; escalated to {self.escalate_to}"
            elif self.status is Status.EXPIRED:
                why = "expired undecided"
            out.append(HistoryEntry(self.status.value, who, self.decided_at, why))
        return sorted(out, key=lambda e: e.at)


def to_record(row: ApprovalRow, votes: list[VoteRow]) -> ApprovalRecord:
    return ApprovalRecord(
        approval_id=row.approval_id,
        tenant=row.tenant,
        workflow=row.workflow,
        run_id=row.run_id,
        step_id=row.step_id,
        correlation_id=row.correlation_id,
        request_event_id=row.request_event_id,
        approves_step=row.approves_step,
        tool=row.tool,
        roles=tuple(row.roles),
        quorum=row.quorum,
        payload=row.payload,
        payload_hash=row.payload_hash,
        before=row.before,
        target=row.target,
        summary=row.summary,
        evidence=row.evidence,
        reason=row.reason,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        expires_at=row.expires_at,
        escalate_to=row.escalate_to,
        status=Status(row.status),
        decided_at=row.decided_at,
        decided_by=tuple(row.decided_by or ()),
        decided_roles=tuple(row.decided_roles or ()),
        decision_reason=row.decision_reason,
        superseded_by=row.superseded_by,
        published=row.decision_event is None or row.published_at is not None,
        votes=tuple(Vote(v.approver, v.role, v.at, v.reason) for v in sorted(votes, key=lambda v: (v.at, v.id or 0))),
    )
