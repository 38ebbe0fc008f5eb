"""The rules of an approval, free of storage and transport: who may decide, and what a decision does.

A request names the roles it needs and a quorum. Each approval is a vote cast by one approver under one
of the requested roles; the request is granted once every requested role has a vote and at least
`quorum` distinct approvers voted (the router's policy asks for "one approval from each role", and a
quorum of N asks for N different people). A single denial by an authorised approver denies the request:
one responsible "no" is enough to stop a write. Whoever asked for the write may never decide on it.

Every function here is pure: the store loads an `ApprovalState`, calls one of these, and writes what comes
back inside one transaction, which is what makes "decided twice" impossible.
"""

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # Expired undecided; ESCALATED when the request named an escalation path the router now takes.
    EXPIRED = "expired"
    ESCALATED = "escalated"
    # A newer request for the same run and step replaced this one before anyone decided it.
    SUPERSEDED = "superseded"
    # The run that asked ended (cancelled, failed, finished) before anyone decided: nothing to unlock.
    WITHDRAWN = "withdrawn"


TERMINAL = frozenset(
    {Status.APPROVED, Status.DENIED, Status.EXPIRED, Status.ESCALATED, Status.SUPERSEDED, Status.WITHDRAWN}
)

#: Longest reason a decision may carry (the decision event's limit), however it is submitted.
MAX_REASON_CHARS = 4096
#: Who denies a request the service itself refuses to show (see `refuse`).
SERVICE_IDENTITY = "keel:approval"


class DecisionRefused(Exception):
    """A decision that must not happen; `code` is stable for clients, the message is for people."""

    http_status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Forbidden(DecisionRefused):
    """The approver is authenticated but may not decide this request."""

    http_status = 403


class Conflict(DecisionRefused):
    """The request is no longer (or not in this form) open to this decision."""

    http_status = 409


class Invalid(DecisionRefused):
    """The decision itself is incomplete, e.g. a denial without a reason."""

    http_status = 422


class NotFound(DecisionRefused):
    http_status = 404


@dataclass(frozen=True)
class Approver:
    name: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Vote:
    approver: str
    role: str
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class ApprovalState:
    approval_id: str
    roles: tuple[str, ...]
    quorum: int
    payload_hash: str
    requested_by: str
    expires_at: datetime
    status: Status = Status.PENDING
    votes: tuple[Vote, ...] = ()
    superseded_by: str | None = None


@dataclass(frozen=True)
class Decision:
    """What one decision does: records a vote and, when it settles the request, its final status."""

    kind: Literal["vote", "granted", "denied"]
    status: Status
    vote: Vote
    votes: tuple[Vote, ...] = field(default_factory=tuple)

    @property
    def final(self) -> bool:
        return self.kind != "vote"


def _identity(value: str) -> str:
    return value.strip().casefold()


def is_requester(approver_name: str, requested_by: str) -> bool:
    """Whether `approver_name` is who asked. `requested_by` may carry a kind prefix (`user:alice`,
    `agent:refund-bot`), so the part after the last colon counts as well as the whole value."""
    who = _identity(approver_name)
    asked = _identity(requested_by)
    return who == asked or who == asked.rsplit(":", 1)[-1]


def eligible_roles(state: ApprovalState, approver: Approver) -> list[str]:
    return [role for role in state.roles if role in approver.roles]


def authorize(state: ApprovalState, approver: Approver, role: str | None = None) -> str:
    """The requested role this approver decides under; refuses the requester and anyone without one."""
    if is_requester(approver.name, state.requested_by):
        raise Forbidden(
            "requester_cannot_decide",
            f"{approver.name} asked for this write ({state.requested_by}) and cannot decide on it",
        )
    roles = eligible_roles(state, approver)
    if not roles:
        raise Forbidden(
            "role_mismatch",
            f"this request needs the role {' or '.join(state.roles)}; {approver.name} holds "
            f"{', '.join(sorted(approver.roles)) or 'no role'}",
        )
    if role is not None:
        if role not in roles:
            raise Forbidden("role_mismatch", f"{approver.name} cannot decide this request as {role!r}")
        return role
    covered = {vote.role for vote in state.votes}
    # Prefer a role nobody has approved under yet, so one vote covers as much of the request as it can.
    return next((r for r in roles if r not in covered), roles[0])


def check_open(state: ApprovalState, now: datetime) -> None:
    """Refuses a decision on a request that is decided, superseded or past its expiry."""
    if state.status is Status.SUPERSEDED:
        raise Conflict(
            "superseded",
            f"approval {state.approval_id} was superseded by {state.superseded_by or 'a newer request'}",
        )
    if state.status is Status.WITHDRAWN:
        raise Conflict("withdrawn", f"approval {state.approval_id} was withdrawn: its run ended before it was decided")
    if state.status in (Status.EXPIRED, Status.ESCALATED):
        raise Conflict("expired", f"approval {state.approval_id} expired at {state.expires_at.isoformat()}")
    if state.status is not Status.PENDING:
        raise Conflict("already_decided", f"approval {state.approval_id} is already {state.status.value}")
    if now >= state.expires_at:
        raise Conflict("expired", f"approval {state.approval_id} expired at {state.expires_at.isoformat()}")


def check_hash(state: ApprovalState, payload_hash: str) -> None:
    """The decision must name the hash of the payload the approver saw: approving binds to it."""
    if not hmac.compare_digest(payload_hash.encode(), state.payload_hash.encode()):
        raise Conflict(
            "payload_changed",
            f"the decision names payload {payload_hash[:20]}..., the request is for {state.payload_hash[:20]}...",
        )


def quorum_met(roles: tuple[str, ...], quorum: int, votes: tuple[Vote, ...]) -> bool:
    people = {_identity(v.approver) for v in votes}
    covered = {v.role for v in votes}
    return all(role in covered for role in roles) and len(people) >= max(quorum, 1)


def approve(
    state: ApprovalState,
    approver: Approver,
    payload_hash: str,
    now: datetime,
    reason: str = "",
    role: str | None = None,
) -> Decision:
    as_role = authorize(state, approver, role)
    check_open(state, now)
    check_hash(state, payload_hash)
    check_reason(reason)
    if any(_identity(v.approver) == _identity(approver.name) for v in state.votes):
        raise Conflict("already_voted", f"{approver.name} has already approved {state.approval_id}")
    vote = Vote(approver.name, as_role, now, reason.strip())
    votes = (*state.votes, vote)
    if quorum_met(state.roles, state.quorum, votes):
        return Decision("granted", Status.APPROVED, vote, votes)
    return Decision("vote", Status.PENDING, vote, votes)


def deny(
    state: ApprovalState,
    approver: Approver,
    payload_hash: str,
    now: datetime,
    reason: str,
    role: str | None = None,
) -> Decision:
    as_role = authorize(state, approver, role)
    check_open(state, now)
    check_hash(state, payload_hash)
    if not reason.strip():
        raise Invalid("reason_required", "a denial needs a reason")
    check_reason(reason)
    vote = Vote(approver.name, as_role, now, reason.strip())
    return Decision("denied", Status.DENIED, vote, (vote,))


def check_reason(reason: str) -> None:
    if len(reason.strip()) > MAX_REASON_CHARS:
        raise Invalid("reason_too_long", f"a reason has at most {MAX_REASON_CHARS} characters, this one {len(reason)}")


def refuse(state: ApprovalState, now: datetime, reason: str) -> Decision:
    """The service denies a request no approver may see (its payload is over the size limit): the run
    hears a denial with the reason at once, instead of waiting for a decision that cannot come."""
    vote = Vote(SERVICE_IDENTITY, state.roles[0], now, reason[:MAX_REASON_CHARS])
    return Decision("denied", Status.DENIED, vote, (vote,))


def expiry(state: ApprovalState, now: datetime, escalate_to: str | None) -> Status | None:
    """The status an expiry timer moves the request to, or None when it must not act (already decided,
    or the timer fired early: schedules fire on whole seconds and may be up to a second ahead)."""
    if state.status is not Status.PENDING or now < state.expires_at:
        return None
    return Status.ESCALATED if escalate_to else Status.EXPIRED
