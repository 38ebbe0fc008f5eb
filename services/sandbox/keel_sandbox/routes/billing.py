"""A Stripe-like billing system: customers, charges and refunds that may not exceed what was charged."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from keel_sandbox.dependencies import ReadSession, Writer
from keel_sandbox.errors import not_found, refused
from keel_sandbox.idempotency import CallerContext, WriteOutcome
from keel_sandbox.models import BillingCharge, BillingCustomer, BillingRefund
from keel_sandbox.routes.common import MAX_LIST, ItemList, Name, OutputModel, RequestModel, UtcDateTime

router = APIRouter(prefix="/billing", tags=["billing"])

# A single charge or refund above this is refused as invalid input, not as a business rule.
MAX_AMOUNT_CENTS = 100_000_000


class RefundReason(StrEnum):
    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"


class CustomerCreate(RequestModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=255)
    name: Name


class CustomerOut(OutputModel):
    id: int
    email: str
    name: str
    created_at: UtcDateTime


class ChargeCreate(RequestModel):
    customer_id: int
    amount_cents: int = Field(gt=0, le=MAX_AMOUNT_CENTS)
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    description: str = Field(default="", max_length=255)


class ChargeOut(OutputModel):
    id: int
    customer_id: int
    amount_cents: int
    currency: str
    description: str
    refunded_cents: int
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None


class RefundCreate(RequestModel):
    charge_id: int
    amount_cents: int = Field(gt=0, le=MAX_AMOUNT_CENTS)
    reason: RefundReason = RefundReason.REQUESTED_BY_CUSTOMER


class RefundOut(OutputModel):
    id: int
    charge_id: int
    amount_cents: int
    currency: str
    reason: RefundReason
    status: str
    created_at: UtcDateTime
    idempotency_key: str | None
    run_id: str | None
    step_id: str | None


@router.get("/customers", response_model=ItemList[CustomerOut])
def find_customers(
    session: ReadSession, email: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100
) -> ItemList[CustomerOut]:
    query = select(BillingCustomer).order_by(BillingCustomer.id).limit(limit)
    if email is not None:
        query = query.where(BillingCustomer.email == email.lower())
    return ItemList[CustomerOut](items=[CustomerOut.model_validate(c) for c in session.scalars(query)])


@router.get("/customers/{customer_id}", response_model=CustomerOut)
def get_customer(customer_id: int, session: ReadSession) -> CustomerOut:
    customer = session.get(BillingCustomer, customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    return CustomerOut.model_validate(customer)


@router.post("/customers", status_code=201, response_model=CustomerOut)
def create_customer(body: CustomerCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        email = body.email.lower()
        if session.scalar(select(BillingCustomer.id).where(BillingCustomer.email == email)) is not None:
            raise refused("customer_exists", f"a customer with email {email!r} already exists", email=email)
        customer = BillingCustomer(email=email, name=body.name, **caller.provenance())
        session.add(customer)
        session.flush()
        out = CustomerOut.model_validate(customer).model_dump(mode="json")
        return WriteOutcome(201, out, BillingCustomer.__tablename__, str(customer.id))

    return writer.execute("billing.customer.create", body, perform)


@router.get("/charges", response_model=ItemList[ChargeOut])
def find_charges(
    session: ReadSession,
    customer_id: int | None = None,
    idempotency_key: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[ChargeOut]:
    query = select(BillingCharge).order_by(BillingCharge.id).limit(limit)
    if customer_id is not None:
        query = query.where(BillingCharge.customer_id == customer_id)
    if idempotency_key is not None:
        query = query.where(BillingCharge.idempotency_key == idempotency_key)
    return ItemList[ChargeOut](items=[ChargeOut.model_validate(c) for c in session.scalars(query)])


@router.get("/charges/{charge_id}", response_model=ChargeOut)
def get_charge(charge_id: int, session: ReadSession) -> ChargeOut:
    charge = session.get(BillingCharge, charge_id)
    if charge is None:
        raise not_found("charge", charge_id)
    return ChargeOut.model_validate(charge)


@router.post("/charges", status_code=201, response_model=ChargeOut)
def create_charge(body: ChargeCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        if session.get(BillingCustomer, body.customer_id) is None:
            raise not_found("customer", body.customer_id)
        charge = BillingCharge(
            customer_id=body.customer_id,
            amount_cents=body.amount_cents,
            currency=body.currency,
            description=body.description,
            **caller.provenance(),
        )
        session.add(charge)
        session.flush()
        out = ChargeOut.model_validate(charge).model_dump(mode="json")
        return WriteOutcome(201, out, BillingCharge.__tablename__, str(charge.id))

    return writer.execute("billing.charge.create", body, perform)


@router.post("/refunds", status_code=201, response_model=RefundOut)
def create_refund(body: RefundCreate, writer: Writer) -> Response:
    def perform(session: Session, caller: CallerContext) -> WriteOutcome:
        charge = session.scalar(select(BillingCharge).where(BillingCharge.id == body.charge_id).with_for_update())
        if charge is None:
            raise not_found("charge", body.charge_id)
        refundable = charge.amount_cents - charge.refunded_cents
        if body.amount_cents > refundable:
            raise refused(
                "refund_exceeds_charge",
                f"refund of {body.amount_cents} exceeds the {refundable} refundable on charge {charge.id}",
                charge_id=charge.id,
                charge_amount_cents=charge.amount_cents,
                refunded_cents=charge.refunded_cents,
                refundable_cents=refundable,
                requested_cents=body.amount_cents,
            )
        charge.refunded_cents += body.amount_cents
        refund = BillingRefund(
            charge_id=charge.id,
            amount_cents=body.amount_cents,
            currency=charge.currency,
            reason=body.reason,
            **caller.provenance(),
        )
        session.add(refund)
        session.flush()
        out = RefundOut.model_validate(refund).model_dump(mode="json")
        return WriteOutcome(201, out, BillingRefund.__tablename__, str(refund.id))

    return writer.execute("billing.refund.create", body, perform)


@router.get("/refunds", response_model=ItemList[RefundOut])
def find_refunds(
    session: ReadSession,
    charge_id: int | None = None,
    idempotency_key: str | None = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> ItemList[RefundOut]:
    query = select(BillingRefund).order_by(BillingRefund.id).limit(limit)
    if charge_id is not None:
        query = query.where(BillingRefund.charge_id == charge_id)
    if idempotency_key is not None:
        query = query.where(BillingRefund.idempotency_key == idempotency_key)
    if run_id is not None:
        query = query.where(BillingRefund.run_id == run_id)
    return ItemList[RefundOut](items=[RefundOut.model_validate(r) for r in session.scalars(query)])


@router.get("/refunds/{refund_id}", response_model=RefundOut)
def get_refund(refund_id: int, session: ReadSession) -> RefundOut:
    refund = session.get(BillingRefund, refund_id)
    if refund is None:
        raise not_found("refund", refund_id)
    return RefundOut.model_validate(refund)
