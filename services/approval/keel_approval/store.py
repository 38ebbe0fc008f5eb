"""The approval store: a projection of approval events, and the one place decisions are serialised.

Applying an event is idempotent, so the consumer, a redelivery and a rebuild all converge on the same
rows. A decision is made inside one transaction that holds the approval's row (SELECT ... FOR UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), asks the domain rules, and writes the result together with the
decision event to publish (an outbox): of two concurrent deciders exactly one wins, and a crash after the
commit still publishes the event on the next start.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from keel_approval.db import Database
from keel_approval.domain import ApprovalState, Decision, NotFound, Status, expiry
from keel_approval.events import DecisionEvent, decision_event, expired_event
from keel_approval.models import ApprovalRow, VoteRow
from keel_approval.records import ApprovalRecord, to_record
from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalWithdrawn,
)
from keel_contracts.envelope import Message
from keel_shared.logging import get_logger
from keel_shared.signing import Signer

log = get_logger(__name__)

_STATUS_OF_EVENT = {"approval_granted": Status.APPROVED, "approval_denied": Status.DENIED}


@dataclass(frozen=True)
class RequestApplied:
    record: ApprovalRecord
    inserted: bool
    superseded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decided:
    record: ApprovalRecord
    decision: Decision
    event: ApprovalGranted | ApprovalDenied | None


class UnknownApproval(Exception):
    """An event names an approval this store has no request for (yet)."""


class TooEarly(Exception):
    """An expiry timer fired before the approval's expiry (schedules fire on whole seconds)."""

    def __init__(self, remaining: float) -> None:
        super().__init__(f"{remaining:.3f}s early")
        self.remaining = remaining


class ApprovalStore:
    def __init__(self, db: Database, clock: Callable[[], datetime], signer: Signer | None = None) -> None:
        self.db = db
        self._clock = clock
        # Signs every decision made here; a store opened only to rebuild or read has none.
        self._signer = signer

    # --- reads -------------------------------------------------------------------------------------
    def _record(self, session: Session, row: ApprovalRow) -> ApprovalRecord:
        votes = session.scalars(select(VoteRow).where(VoteRow.approval_id == row.approval_id)).all()
        return to_record(row, list(votes))

    def get(self, approval_id: str) -> ApprovalRecord | None:
        with self.db.sessions() as session:
            row = session.get(ApprovalRow, approval_id)
            return None if row is None else self._record(session, row)

    def find(
        self, statuses: Iterable[Status] | None = None, roles: Iterable[str] | None = None, limit: int = 200
    ) -> list[ApprovalRecord]:
        """Newest first; `roles` keeps the approvals that name at least one of them."""
        wanted = None if roles is None else set(roles)
        query = select(ApprovalRow).order_by(ApprovalRow.request_seq.desc())
        if statuses is not None:
            query = query.where(ApprovalRow.status.in_([s.value for s in statuses]))
        out: list[ApprovalRecord] = []
        with self.db.sessions() as session:
            # Roles are a JSON list, which SQLite and PostgreSQL query differently: filter here instead.
            for row in session.scalars(query):
                if wanted is None or wanted.intersection(row.roles):
                    out.append(self._record(session, row))
                    if len(out) >= limit:
                        break
        return out

    def is_empty(self) -> bool:
        with self.db.sessions() as session:
            return not session.scalar(select(func.count()).select_from(ApprovalRow))

    # --- projection --------------------------------------------------------------------------------
    def apply_requested(self, event: ApprovalRequested, seq: int) -> RequestApplied:
        with self.db.sessions.begin() as session:
            return self._apply_requested(session, event, seq)

    def _apply_requested(self, session: Session, event: ApprovalRequested, seq: int) -> RequestApplied:
        body = event.body
        existing = session.get(ApprovalRow, body.approval_id, with_for_update=True)
        if existing is not None:
            return RequestApplied(self._record(session, existing), inserted=False)
        same_step = (
            (ApprovalRow.workflow == event.workflow)
            & (ApprovalRow.run_id == event.run_id)
            & (ApprovalRow.approves_step == body.approves_step)
        )
        row = ApprovalRow(
            approval_id=body.approval_id,
            tenant=event.tenant,
            workflow=event.workflow,
            run_id=event.run_id,
            step_id=event.step_id,
            correlation_id=event.correlation_id,
            request_event_id=event.id,
            request_seq=seq,
            approves_step=body.approves_step,
            tool=body.tool,
            roles=list(body.roles),
            quorum=body.quorum,
            payload=body.payload,
            payload_hash=body.payload_hash,
            before=body.before,
            target=body.target.model_dump(mode="json"),
            summary=body.summary,
            evidence=body.evidence,
            reason=body.reason,
            requested_by=body.requested_by,
            requested_at=event.occurred_at,
            expires_at=body.expires_at,
            escalate_to=body.escalate_to,
            status=Status.PENDING.value,
        )
        # Stream order decides which request for a step is current, also when a redelivery brings an
        # older request after a newer one.
        newer = session.scalars(
            select(ApprovalRow).where(same_step, ApprovalRow.request_seq > seq).order_by(ApprovalRow.request_seq)
        ).first()
        if newer is not None:
            row.status = Status.SUPERSEDED.value
            row.superseded_by = newer.approval_id
            row.decided_at = newer.requested_at
        session.add(row)
        superseded: list[str] = []
        older = session.scalars(
            select(ApprovalRow)
            .where(same_step, ApprovalRow.status == Status.PENDING.value, ApprovalRow.request_seq < seq)
            .with_for_update()
        ).all()
        for old in older:
            old.status = Status.SUPERSEDED.value
            old.superseded_by = body.approval_id
            old.decided_at = event.occurred_at
            superseded.append(old.approval_id)
        session.flush()
        return RequestApplied(self._record(session, row), inserted=True, superseded=superseded)

    def apply_decision(self, event: DecisionEvent) -> bool:
        with self.db.sessions.begin() as session:
            return self._apply_decision(session, event)

    def _apply_decision(self, session: Session, event: DecisionEvent) -> bool:
        """Record a decision event found in the stream. The first decision of an approval wins; a
        decision is a fact and overrides a supersession, which is only derived from request order."""
        row = session.get(ApprovalRow, event.body.approval_id, with_for_update=True)
        if row is None:
            log.warning("decision_for_unknown_approval", approval_id=event.body.approval_id, type=event.type)
            return False
        if row.status not in (Status.PENDING.value, Status.SUPERSEDED.value):
            if row.decision_event is not None and row.decision_event.get("id") == event.id:
                row.published_at = row.published_at or self._clock()
            return False
        doc = event.model_dump(mode="json")
        row.decision_event = doc
        row.published_at = self._clock()
        row.superseded_by = None
        if isinstance(event, ApprovalExpired):
            row.status = (Status.ESCALATED if event.body.escalate_to else Status.EXPIRED).value
            row.decided_at = event.body.expired_at
            row.decided_by = []
            row.decided_roles = []
            return True
        row.status = _STATUS_OF_EVENT[event.type].value
        row.decided_at = event.body.decided_at
        row.decided_by = list(event.body.decided_by)
        row.decided_roles = list(event.body.roles)
        row.decision_reason = event.body.reason
        if isinstance(event, ApprovalGranted):
            session.execute(delete(VoteRow).where(VoteRow.approval_id == row.approval_id))
            for who, role in zip(event.body.decided_by, event.body.roles, strict=False):
                session.add(
                    VoteRow(approval_id=row.approval_id, approver=who, role=role, reason="", at=event.body.decided_at)
                )
        return True

    def apply_withdrawn(self, event: ApprovalWithdrawn) -> ApprovalRecord | None:
        """The withdrawn record, or None when a decision came first; `UnknownApproval` when no request
        for it is stored (its request may still be on its way: the consumer handles messages at once)."""
        with self.db.sessions.begin() as session:
            if session.get(ApprovalRow, event.body.approval_id) is None:
                raise UnknownApproval(event.body.approval_id)
            return self._apply_withdrawn(session, event)

    def _apply_withdrawn(self, session: Session, event: ApprovalWithdrawn) -> ApprovalRecord | None:
        """The run ended before anyone decided: a pending request is no longer decidable. A decision that
        came first stands (the router folded it before the run's end)."""
        row = session.get(ApprovalRow, event.body.approval_id, with_for_update=True)
        if row is None or row.run_id != event.run_id or row.status != Status.PENDING.value:
            return None
        row.status = Status.WITHDRAWN.value
        row.decided_at = event.occurred_at
        row.decision_reason = event.body.reason
        row.decided_by = []
        row.decided_roles = []
        session.flush()
        return self._record(session, row)

    def replay(self, events: Iterable[tuple[int, Message]], *, wipe: bool) -> int:
        """Apply stream events in order, in one transaction. With `wipe` the projection is rebuilt from
        scratch; votes towards a still-pending quorum are not events, so they are carried over."""
        applied = 0
        with self.db.sessions.begin() as session:
            kept: list[VoteRow] = []
            if wipe:
                pending = select(ApprovalRow.approval_id).where(ApprovalRow.status == Status.PENDING.value)
                for vote in session.scalars(select(VoteRow).where(VoteRow.approval_id.in_(pending))):
                    kept.append(
                        VoteRow(
                            approval_id=vote.approval_id,
                            approver=vote.approver,
                            role=vote.role,
                            reason=vote.reason,
                            at=vote.at,
                        )
                    )
                session.execute(delete(VoteRow))
                session.execute(delete(ApprovalRow))
            for seq, event in events:
                if isinstance(event, ApprovalRequested):
                    applied += self._apply_requested(session, event, seq).inserted
                elif isinstance(event, ApprovalGranted | ApprovalDenied | ApprovalExpired):
                    applied += self._apply_decision(session, event)
                elif isinstance(event, ApprovalWithdrawn):
                    applied += self._apply_withdrawn(session, event) is not None
            session.flush()
            for vote in kept:
                row = session.get(ApprovalRow, vote.approval_id)
                if row is not None and row.status == Status.PENDING.value:
                    session.add(vote)
        return applied

    # --- decisions ---------------------------------------------------------------------------------
    def decide(self, approval_id: str, rule: Callable[[ApprovalState], Decision]) -> Decided:
        """Apply one domain rule (approve or deny) to the approval under its row lock."""
        with self.db.sessions.begin() as session:
            row = session.get(ApprovalRow, approval_id, with_for_update=True)
            if row is None:
                raise NotFound("not_found", f"no approval {approval_id}")
            record = self._record(session, row)
            decision = rule(record.state())
            vote = decision.vote
            session.add(
                VoteRow(approval_id=approval_id, approver=vote.approver, role=vote.role, reason=vote.reason, at=vote.at)
            )
            event = None
            if decision.final:
                if self._signer is None:
                    raise RuntimeError("this approval store has no signing key: it cannot decide")
                event = decision_event(record, decision, self._signer)
                row.status = decision.status.value
                row.decided_at = vote.at
                row.decided_by = list(event.body.decided_by)
                row.decided_roles = list(event.body.roles)
                row.decision_reason = vote.reason
                row.decision_event = event.model_dump(mode="json")
                row.published_at = None
            session.flush()
            return Decided(self._record(session, row), decision, event)

    def expire(self, approval_id: str, now: datetime) -> tuple[ApprovalRecord, ApprovalExpired] | None:
        """Expire a pending approval whose time has come; None when it is already settled."""
        with self.db.sessions.begin() as session:
            row = session.get(ApprovalRow, approval_id, with_for_update=True)
            if row is None:
                return None
            record = self._record(session, row)
            status = expiry(record.state(), now, record.escalate_to)
            if status is None:
                if record.status is Status.PENDING:
                    raise TooEarly((record.expires_at - now).total_seconds())
                return None
            event = expired_event(record, now)
            row.status = status.value
            row.decided_at = now
            row.decided_by = []
            row.decided_roles = []
            row.decision_event = event.model_dump(mode="json")
            row.published_at = None
            session.flush()
            return self._record(session, row), event

    # --- outbox ------------------------------------------------------------------------------------
    def unpublished(self) -> list[tuple[str, dict[str, Any]]]:
        query = select(ApprovalRow.approval_id, ApprovalRow.decision_event).where(
            ApprovalRow.decision_event.is_not(None), ApprovalRow.published_at.is_(None)
        )
        with self.db.sessions() as session:
            return [(approval_id, doc) for approval_id, doc in session.execute(query) if doc is not None]

    def mark_published(self, approval_id: str) -> None:
        with self.db.sessions.begin() as session:
            row = session.get(ApprovalRow, approval_id, with_for_update=True)
            if row is not None and row.published_at is None:
                row.published_at = self._clock()
