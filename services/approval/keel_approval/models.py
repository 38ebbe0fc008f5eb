"""The approval store's tables. The schema is owned by the Alembic migrations in `migrations/`; these
mappings must match them (a unit test compares the two).

`approvals` and `votes` are a projection of the event stream and can be rebuilt from it. `approvers`
and `sessions` are local configuration: who may log in, which no event carries.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL and on SQLite (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the approval store keeps UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime}


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_run_step", "workflow", "run_id", "approves_step"),)

    approval_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    workflow: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(128))
    step_id: Mapped[str | None] = mapped_column(String(128))
    correlation_id: Mapped[str] = mapped_column(String(128))
    request_event_id: Mapped[str] = mapped_column(String(64))
    # Stream sequence of the approval_requested event: orders requests for the same step.
    request_seq: Mapped[int] = mapped_column(BigInteger)
    approves_step: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(128))
    roles: Mapped[list[str]] = mapped_column(JSON)
    quorum: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload_hash: Mapped[str] = mapped_column(String(80))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(256))
    requested_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    escalate_to: Mapped[str | None] = mapped_column(String(128))

    status: Mapped[str] = mapped_column(String(16), index=True)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[list[str] | None] = mapped_column(JSON)
    decided_roles: Mapped[list[str] | None] = mapped_column(JSON)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    superseded_by: Mapped[str | None] = mapped_column(String(512))
    # The outbox: the decision event to publish, kept until the stream has it (published_at set).
    decision_event: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    published_at: Mapped[datetime | None]


class VoteRow(Base):
    """One approval cast towards a quorum. A denial settles the request at once and is kept on the
    approval itself (decided_by, decision_reason)."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("approval_id", "approver", name="uq_votes_approval_approver"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(String(512), ForeignKey("approvals.approval_id", ondelete="CASCADE"))
    approver: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class ApproverRow(Base):
    __tablename__ = "approvers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class SessionRow(Base):
    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    approver_id: Mapped[int] = mapped_column(Integer, ForeignKey("approvers.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
