"""A Jira-like ticket tracker: tickets with a status workflow, and comments."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from keel_sandbox.dependencies import ReadSession, Writer
from keel_sandbox.errors import not_found, refused
from keel_sandbox.idempotency import CallerContext, WriteOutcome
from keel_sandbox.models import Ticket, TicketComment, TicketTransition, utcnow
from keel_sandbox.routes.common import MAX_LIST, ItemList, Name, OutputModel, RequestModel, Text, UtcDateTime

router = APIRouter(prefix="/tickets", tags=["tickets"])

TICKET_KEY = re.compile(r"^([A-Z][A-Z0-9]{1,9})-([1-9][0-9]{0,17})$")


class Priority(StrEnum):
    LOWEST = "lowest"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    HIGHEST = "highest"


class Status(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"


ALLOWED_TRANSITIONS: dict[Status, tuple[Status, ...]] = {
    Status.OPEN: (Status.IN_PROGRESS, Status.CLOSED),
    Status.IN_PROGRESS: (Status.OPEN, Status.RESOLVED),
    Status.RESOLVED: (Status.IN_PROGRESS, Status.CLOSED),
    Status.CLOSED: (),
}


class TicketCreate(RequestModel):
    project: str = Field(pattern=r"^[A-Z][A-Z0-9]{1,9}$", examples=["OPS"])
    summary: Name
    description: str = Field(default="", max_length=10_000)
    priority: Priority = Priority.MEDIUM
    reporter: Name
    assignee: Name | None = None


class TicketOut(OutputModel):
    id: int
    key: str
    project: str
    summary: str
    description: str
    priority: Priority
    status: Status
    reporter: str
    assignee: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


class TransitionCreate(RequestModel):
    to: Status
    actor: Name | None = None


class TransitionOut(OutputModel):
    id: int
    ticket_id: int
    from_status: Status
    to_status: Status
    actor: str | None
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


class TransitionResult(OutputModel):
    ticket: TicketOut
    transition: TransitionOut


class CommentCreate(RequestModel):
    author: Name
    body: Text


class CommentOut(OutputModel):
    id: int
    ticket_id: int
    author: str
    body: str
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


def _load_ticket(session: Session, key: str, *, for_update: bool = False) -> Ticket:
    match = TICKET_KEY.match(key)
    if match is None:
        raise not_found("ticket", key)
    query = select(Ticket).where(Ticket.id == int(match.group(2)), Ticket.project == match.group(1))
    if for_update:
        query = query.with_for_update()
    ticket = session.scalar(query)
    if ticket is None:
        raise not_found("ticket", key)
    return ticket


@router.post("", status_code=201, response_model=TicketOut)
def create_ticket(body: TicketCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        ticket = Ticket(
            project=body.project,
            summary=body.summary,
            description=body.description,
            priority=body.priority,
            status=Status.OPEN,
            reporter=body.reporter,
            assignee=body.assignee,
            **caller.provenance(),
        )
        session.add(ticket)
        session.flush()
        out = TicketOut.model_validate(ticket).model_dump(mode="json")
        return WriteOutcome(201, out, Ticket.__tablename__, ticket.key)

    return writer.execute("ticket.create", body, perform)


@router.get("", response_model=ItemList[TicketOut])
def search_tickets(
    session: ReadSession,
    project: str | None = None,
    status: Status | None = None,
    priority: Priority | None = None,
    reporter: str | None = None,
    assignee: str | None = None,
    idempotency_key: str | None = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[TicketOut]:
    query = select(Ticket).order_by(Ticket.id).limit(limit)
    filters = [
        (Ticket.project, project),
        (Ticket.status, status),
        (Ticket.priority, priority),
        (Ticket.reporter, reporter),
        (Ticket.assignee, assignee),
        (Ticket.idempotency_key, idempotency_key),
        (Ticket.run_id, run_id),
    ]
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    return ItemList[TicketOut](items=[TicketOut.model_validate(t) for t in session.scalars(query)])


@router.get("/{key}", response_model=TicketOut)
def get_ticket(key: str, session: ReadSession) -> TicketOut:
    return TicketOut.model_validate(_load_ticket(session, key))


@router.post("/{key}/transitions", status_code=201, response_model=TransitionResult)
def transition_ticket(key: str, body: TransitionCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        ticket = _load_ticket(session, key, for_update=True)
        current = Status(ticket.status)
        allowed = ALLOWED_TRANSITIONS[current]
        if body.to not in allowed:
            raise refused(
                "illegal_transition",
                f"a ticket in status {current.value!r} cannot move to {body.to.value!r}",
                ticket=ticket.key,
                from_status=current,
                to_status=body.to,
                allowed=list(allowed),
            )
        transition = TicketTransition(
            ticket_id=ticket.id,
            from_status=current,
            to_status=body.to,
            actor=body.actor,
            **caller.provenance(),
        )
        ticket.status = body.to
        ticket.updated_at = utcnow()
        session.add(transition)
        session.flush()
        result = TransitionResult(
            ticket=TicketOut.model_validate(ticket), transition=TransitionOut.model_validate(transition)
        )
        return WriteOutcome(201, result.model_dump(mode="json"), TicketTransition.__tablename__, str(transition.id))

    return writer.execute("ticket.transition", body, perform)


@router.get("/{key}/transitions", response_model=ItemList[TransitionOut])
def list_transitions(key: str, session: ReadSession, idempotency_key: str | None = None) -> ItemList[TransitionOut]:
    ticket = _load_ticket(session, key)
    query = select(TicketTransition).where(TicketTransition.ticket_id == ticket.id).order_by(TicketTransition.id)
    if idempotency_key is not None:
        query = query.where(TicketTransition.idempotency_key == idempotency_key)
    return ItemList[TransitionOut](items=[TransitionOut.model_validate(t) for t in session.scalars(query)])


@router.post("/{key}/comments", status_code=201, response_model=CommentOut)
def add_comment(key: str, body: CommentCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        ticket = _load_ticket(session, key)
        if ticket.status == Status.CLOSED:
            raise refused("ticket_closed", f"ticket {ticket.key} is closed and takes no comments", ticket=ticket.key)
        comment = TicketComment(ticket_id=ticket.id, author=body.author, body=body.body, **caller.provenance())
        ticket.updated_at = utcnow()
        session.add(comment)
        session.flush()
        out = CommentOut.model_validate(comment).model_dump(mode="json")
        return WriteOutcome(201, out, TicketComment.__tablename__, str(comment.id))

    return writer.execute("ticket.comment", body, perform)


@router.get("/{key}/comments", response_model=ItemList[CommentOut])
def list_comments(key: str, session: ReadSession, idempotency_key: str | None = None) -> ItemList[CommentOut]:
    ticket = _load_ticket(session, key)
    query = select(TicketComment).where(TicketComment.ticket_id == ticket.id).order_by(TicketComment.id)
    if idempotency_key is not None:
        query = query.where(TicketComment.idempotency_key == idempotency_key)
    return ItemList[CommentOut](items=[CommentOut.model_validate(c) for c in session.scalars(query)])
