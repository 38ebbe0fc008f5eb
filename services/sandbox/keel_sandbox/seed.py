"""Deterministic starting data, so demos and tests can refer to known records without creating them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keel_sandbox.models import (
    AccessGrant,
    BillingCharge,
    BillingCustomer,
    CrmAccount,
    CrmContact,
)

LEGAL_HOLD = "legal hold: records under litigation may not be changed"


def seed_records(session: Session) -> None:
    acme = CrmAccount(name="Acme Corp", domain="acme.example", tier="enterprise")
    globex = CrmAccount(name="Globex", domain="globex.example", tier="growth", locked=True, lock_reason=LEGAL_HOLD)
    session.add_all([acme, globex])
    session.flush()
    session.add_all(
        [
            CrmContact(account_id=acme.id, email="alice@acme.example", name="Alice Anders", title="Head of Ops"),
            CrmContact(account_id=acme.id, email="bob@acme.example", name="Bob Brandt", title="Engineer"),
            CrmContact(
                account_id=globex.id,
                email="carol@globex.example",
                name="Carol Chen",
                title="CFO",
                locked=True,
                lock_reason=LEGAL_HOLD,
            ),
        ]
    )

    alice = BillingCustomer(email="alice@acme.example", name="Alice Anders")
    bob = BillingCustomer(email="bob@acme.example", name="Bob Brandt")
    session.add_all([alice, bob])
    session.flush()
    session.add_all(
        [
            BillingCharge(customer_id=alice.id, amount_cents=4999, currency="usd", description="Pro plan, monthly"),
            BillingCharge(
                customer_id=bob.id, amount_cents=129900, currency="usd", description="Enterprise plan, annual"
            ),
        ]
    )

    session.add(AccessGrant(user="alice@acme.example", system="github", role="member", reason="onboarding"))
    session.flush()


def seed_if_empty(session: Session) -> None:
    if session.scalar(select(func.count()).select_from(CrmAccount)) == 0:
        seed_records(session)
