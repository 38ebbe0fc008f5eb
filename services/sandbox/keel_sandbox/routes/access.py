"""Access control for internal systems: grant and revoke roles; privileged roles need an approval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from keel_sandbox.dependencies import ReadSession, Writer
from keel_sandbox.errors import not_found, refused
from keel_sandbox.idempotency import CallerContext, WriteOutcome
from keel_sandbox.models import AccessGrant, AccessRevocation, utcnow
from keel_sandbox.routes.common import MAX_LIST, ItemList, Name, OutputModel, RequestModel, UtcDateTime

router = APIRouter(prefix="/access", tags=["access"])

PRIVILEGED_ROLES = frozenset({"admin", "owner", "root"})

Role = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]


class GrantCreate(RequestModel):
    user: Name
    system: Name
    role: Role
    reason: str = Field(default="", max_length=1000)
    approval_ref: Name | None = None


class GrantOut(OutputModel):
    id: int
    user: str
    system: str
    role: str
    reason: str
    approval_ref: str | None
    granted_at: UtcDateTime
    revoked_at: UtcDateTime | None
    active: bool
    idempotency_key: str | None
    run_id: str | None


class RevocationCreate(RequestModel):
    user: Name
    system: Name
    role: Role
    reason: str = Field(default="", max_length=1000)


class RevocationOut(OutputModel):
    id: int
    grant_id: int
    reason: str
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


class RevocationResult(OutputModel):
    grant: GrantOut
    revocation: RevocationOut


def _grant_out(grant: AccessGrant) -> GrantOut:
    return GrantOut.model_validate(
        {
            **{name: getattr(grant, name) for name in GrantOut.model_fields if name != "active"},
            "active": grant.revoked_at is None,
        }
    )


def _active_grant(session: Session, user: str, system: str, role: str) -> AccessGrant | None:
    query = select(AccessGrant).where(
        AccessGrant.user == user,
        AccessGrant.system == system,
        AccessGrant.role == role,
        AccessGrant.revoked_at.is_(None),
    )
    return session.scalar(query.with_for_update())


@router.post("/grants", status_code=201, response_model=GrantOut)
def grant_role(body: GrantCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        if body.role in PRIVILEGED_ROLES and body.approval_ref is None:
            raise refused(
                "approval_required",
                f"role {body.role!r} is privileged: a security approval reference is required",
                role=body.role,
                privileged_roles=sorted(PRIVILEGED_ROLES),
            )
        existing = _active_grant(session, body.user, body.system, body.role)
        if existing is not None:
            raise refused(
                "grant_exists",
                f"{body.user} already holds {body.role!r} on {body.system}",
                grant_id=existing.id,
            )
        grant = AccessGrant(
            user=body.user,
            system=body.system,
            role=body.role,
            reason=body.reason,
            approval_ref=body.approval_ref,
            **caller.provenance(),
        )
        session.add(grant)
        session.flush()
        return WriteOutcome(201, _grant_out(grant).model_dump(mode="json"), AccessGrant.__tablename__, str(grant.id))

    return writer.execute("access.grant", body, perform)


@router.post("/revocations", status_code=201, response_model=RevocationResult)
def revoke_role(body: RevocationCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        grant = _active_grant(session, body.user, body.system, body.role)
        if grant is None:
            raise refused(
                "no_active_grant",
                f"{body.user} holds no active {body.role!r} grant on {body.system}",
                user=body.user,
                system=body.system,
                role=body.role,
            )
        grant.revoked_at = utcnow()
        revocation = AccessRevocation(grant_id=grant.id, reason=body.reason, **caller.provenance())
        session.add(revocation)
        session.flush()
        result = RevocationResult(grant=_grant_out(grant), revocation=RevocationOut.model_validate(revocation))
        return WriteOutcome(201, result.model_dump(mode="json"), AccessRevocation.__tablename__, str(revocation.id))

    return writer.execute("access.revoke", body, perform)


@router.get("/grants", response_model=ItemList[GrantOut])
def list_grants(
    session: ReadSession,
    user: str | None = None,
    system: str | None = None,
    role: str | None = None,
    active: bool | None = None,
    idempotency_key: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[GrantOut]:
    query = select(AccessGrant).order_by(AccessGrant.id).limit(limit)
    if user is not None:
        query = query.where(AccessGrant.user == user)
    if system is not None:
        query = query.where(AccessGrant.system == system)
    if role is not None:
        query = query.where(AccessGrant.role == role)
    if active is not None:
        query = query.where(AccessGrant.revoked_at.is_(None) if active else AccessGrant.revoked_at.is_not(None))
    if idempotency_key is not None:
        query = query.where(AccessGrant.idempotency_key == idempotency_key)
    return ItemList[GrantOut](items=[_grant_out(g) for g in session.scalars(query)])


@router.get("/grants/{grant_id}", response_model=GrantOut)
def get_grant(grant_id: int, session: ReadSession) -> GrantOut:
    grant = session.get(AccessGrant, grant_id)
    if grant is None:
        raise not_found("grant", grant_id)
    return _grant_out(grant)


@router.get("/revocations", response_model=ItemList[RevocationOut])
def list_revocations(
    session: ReadSession,
    grant_id: int | None = None,
    idempotency_key: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[RevocationOut]:
    query = select(AccessRevocation).order_by(AccessRevocation.id).limit(limit)
    if grant_id is not None:
        query = query.where(AccessRevocation.grant_id == grant_id)
    if idempotency_key is not None:
        query = query.where(AccessRevocation.idempotency_key == idempotency_key)
    return ItemList[RevocationOut](items=[RevocationOut.model_validate(r) for r in session.scalars(query)])
