"""A small CRM: accounts and contacts, contact updates (locked records refuse them) and notes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from keel_sandbox.dependencies import ReadSession, Writer
from keel_sandbox.errors import not_found, refused
from keel_sandbox.idempotency import CallerContext, WriteOutcome
from keel_sandbox.models import CrmAccount, CrmContact, CrmContactChange, CrmNote, utcnow
from keel_sandbox.routes.common import MAX_LIST, ItemList, Name, OutputModel, RequestModel, Text, UtcDateTime

router = APIRouter(prefix="/crm", tags=["crm"])


class ContactStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class AccountOut(OutputModel):
    id: int
    name: str
    domain: str
    tier: str
    locked: bool
    lock_reason: str | None


class ContactOut(OutputModel):
    id: int
    account_id: int
    email: str
    name: str
    phone: str | None
    title: str | None
    status: ContactStatus
    locked: bool
    lock_reason: str | None
    updated_at: UtcDateTime


class ContactCreate(RequestModel):
    account_id: int
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=255)
    name: Name
    phone: str | None = Field(default=None, max_length=64)
    title: Name | None = None


class ContactUpdate(RequestModel):
    name: Name | None = None
    phone: str | None = Field(default=None, max_length=64)
    title: Name | None = None
    status: ContactStatus | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> ContactUpdate:
        if not self.model_fields_set:
            raise ValueError("an update must set at least one of: name, phone, title, status")
        for required in ("name", "status"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be cleared")
        return self


class ContactChangeOut(OutputModel):
    id: int
    contact_id: int
    changes: dict[str, list[str | None]]
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


class ContactUpdateResult(OutputModel):
    contact: ContactOut
    change: ContactChangeOut


class NoteCreate(RequestModel):
    author: Name
    body: Text


class NoteOut(OutputModel):
    id: int
    contact_id: int
    author: str
    body: str
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


def _load_contact(session: Session, contact_id: int, *, for_update: bool = False) -> CrmContact:
    query = select(CrmContact).where(CrmContact.id == contact_id)
    contact = session.scalar(query.with_for_update() if for_update else query)
    if contact is None:
        raise not_found("contact", contact_id)
    return contact


@router.get("/accounts", response_model=ItemList[AccountOut])
def find_accounts(
    session: ReadSession,
    domain: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[AccountOut]:
    query = select(CrmAccount).order_by(CrmAccount.id).limit(limit)
    if domain is not None:
        query = query.where(CrmAccount.domain == domain.lower())
    if name is not None:
        query = query.where(CrmAccount.name == name)
    return ItemList[AccountOut](items=[AccountOut.model_validate(a) for a in session.scalars(query)])


@router.get("/accounts/{account_id}", response_model=AccountOut)
def get_account(account_id: int, session: ReadSession) -> AccountOut:
    account = session.get(CrmAccount, account_id)
    if account is None:
        raise not_found("account", account_id)
    return AccountOut.model_validate(account)


@router.get("/contacts", response_model=ItemList[ContactOut])
def find_contacts(
    session: ReadSession,
    email: str | None = None,
    account_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[ContactOut]:
    query = select(CrmContact).order_by(CrmContact.id).limit(limit)
    if email is not None:
        query = query.where(CrmContact.email == email.lower())
    if account_id is not None:
        query = query.where(CrmContact.account_id == account_id)
    return ItemList[ContactOut](items=[ContactOut.model_validate(c) for c in session.scalars(query)])


@router.get("/contacts/{contact_id}", response_model=ContactOut)
def get_contact(contact_id: int, session: ReadSession) -> ContactOut:
    return ContactOut.model_validate(_load_contact(session, contact_id))


@router.post("/contacts", status_code=201, response_model=ContactOut)
def create_contact(body: ContactCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        if session.get(CrmAccount, body.account_id) is None:
            raise not_found("account", body.account_id)
        email = body.email.lower()
        if session.scalar(select(CrmContact.id).where(CrmContact.email == email)) is not None:
            raise refused("contact_exists", f"a contact with email {email!r} already exists", email=email)
        contact = CrmContact(
            account_id=body.account_id,
            email=email,
            name=body.name,
            phone=body.phone,
            title=body.title,
            **caller.provenance(),
        )
        session.add(contact)
        session.flush()
        out = ContactOut.model_validate(contact).model_dump(mode="json")
        return WriteOutcome(201, out, CrmContact.__tablename__, str(contact.id))

    return writer.execute("crm.contact.create", body, perform)


@router.patch("/contacts/{contact_id}", response_model=ContactUpdateResult)
def update_contact(contact_id: int, body: ContactUpdate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        contact = _load_contact(session, contact_id, for_update=True)
        if contact.locked:
            raise refused(
                "record_locked",
                f"contact {contact_id} is locked and refuses updates: {contact.lock_reason}",
                contact_id=contact_id,
                lock_reason=contact.lock_reason,
            )
        changes: dict[str, list[str | None]] = {}
        for field in sorted(body.model_fields_set):
            old = getattr(contact, field)
            new = getattr(body, field)
            if old != new:
                changes[field] = [old, new]
                setattr(contact, field, new)
        contact.updated_at = utcnow()
        change = CrmContactChange(contact_id=contact.id, changes=changes, **caller.provenance())
        session.add(change)
        session.flush()
        result = ContactUpdateResult(
            contact=ContactOut.model_validate(contact), change=ContactChangeOut.model_validate(change)
        )
        return WriteOutcome(200, result.model_dump(mode="json"), CrmContactChange.__tablename__, str(change.id))

    return writer.execute("crm.contact.update", body, perform)


@router.get("/contacts/{contact_id}/changes", response_model=ItemList[ContactChangeOut])
def list_contact_changes(
    contact_id: int, session: ReadSession, idempotency_key: str | None = None
) -> ItemList[ContactChangeOut]:
    _load_contact(session, contact_id)
    query = select(CrmContactChange).where(CrmContactChange.contact_id == contact_id).order_by(CrmContactChange.id)
    if idempotency_key is not None:
        query = query.where(CrmContactChange.idempotency_key == idempotency_key)
    return ItemList[ContactChangeOut](items=[ContactChangeOut.model_validate(c) for c in session.scalars(query)])


@router.post("/contacts/{contact_id}/notes", status_code=201, response_model=NoteOut)
def add_note(contact_id: int, body: NoteCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        _load_contact(session, contact_id)
        note = CrmNote(contact_id=contact_id, author=body.author, body=body.body, **caller.provenance())
        session.add(note)
        session.flush()
        return WriteOutcome(
            201, NoteOut.model_validate(note).model_dump(mode="json"), CrmNote.__tablename__, str(note.id)
        )

    return writer.execute("crm.note.create", body, perform)


@router.get("/contacts/{contact_id}/notes", response_model=ItemList[NoteOut])
def list_notes(contact_id: int, session: ReadSession, idempotency_key: str | None = None) -> ItemList[NoteOut]:
    _load_contact(session, contact_id)
    query = select(CrmNote).where(CrmNote.contact_id == contact_id).order_by(CrmNote.id)
    if idempotency_key is not None:
        query = query.where(CrmNote.idempotency_key == idempotency_key)
    return ItemList[NoteOut](items=[NoteOut.model_validate(n) for n in session.scalars(query)])
