from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest


async def new_ticket(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"project": "OPS", "summary": "VPN is down", "reporter": "alice", **fields}
    response = await client.post("/tickets", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def transition(client: httpx.AsyncClient, key: str, to: str) -> httpx.Response:
    return await client.post(f"/tickets/{key}/transitions", json={"to": to, "actor": "agent"})


# --- tickets ---------------------------------------------------------------------------------------------


async def test_created_ticket_is_open_and_found_by_key_and_by_field(client: httpx.AsyncClient) -> None:
    ticket = await new_ticket(client, priority="high", assignee="bob")
    await new_ticket(client, project="SEC", summary="phishing report")

    assert ticket["status"] == "open"
    assert ticket["key"] == f"OPS-{ticket['id']}"
    assert (await client.get(f"/tickets/{ticket['key']}")).json() == ticket
    found = (await client.get("/tickets", params={"project": "OPS", "priority": "high"})).json()["items"]
    assert [t["key"] for t in found] == [ticket["key"]]


async def test_ticket_key_of_another_project_is_not_found(client: httpx.AsyncClient) -> None:
    ticket = await new_ticket(client)

    response = await client.get(f"/tickets/SEC-{ticket['id']}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ticket_not_found"


async def test_ticket_follows_the_workflow_to_closed(client: httpx.AsyncClient) -> None:
    key = (await new_ticket(client))["key"]

    statuses = []
    for to in ("in_progress", "resolved", "closed"):
        response = await transition(client, key, to)
        assert response.status_code == 201, response.text
        statuses.append(response.json()["ticket"]["status"])

    assert statuses == ["in_progress", "resolved", "closed"]
    history = (await client.get(f"/tickets/{key}/transitions")).json()["items"]
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        ("open", "in_progress"),
        ("in_progress", "resolved"),
        ("resolved", "closed"),
    ]


async def test_illegal_transition_is_refused_with_409_and_the_allowed_targets(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    key = (await new_ticket(client))["key"]

    response = await transition(client, key, "resolved")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "illegal_transition"
    assert error["details"]["allowed"] == ["in_progress", "closed"]
    assert (await client.get(f"/tickets/{key}")).json()["status"] == "open"
    assert count_rows("ticket_transitions") == 0


async def test_closed_ticket_refuses_any_transition_and_comments(client: httpx.AsyncClient) -> None:
    key = (await new_ticket(client))["key"]
    await transition(client, key, "closed")

    reopened = await transition(client, key, "open")
    comment = await client.post(f"/tickets/{key}/comments", json={"author": "bob", "body": "still broken"})

    assert reopened.status_code == 409
    assert reopened.json()["error"]["details"]["allowed"] == []
    assert comment.status_code == 409
    assert comment.json()["error"]["code"] == "ticket_closed"


async def test_comment_is_added_to_an_open_ticket(client: httpx.AsyncClient) -> None:
    key = (await new_ticket(client))["key"]

    response = await client.post(f"/tickets/{key}/comments", json={"author": "bob", "body": "rebooted it"})

    assert response.status_code == 201
    comments = (await client.get(f"/tickets/{key}/comments")).json()["items"]
    assert [(c["author"], c["body"]) for c in comments] == [("bob", "rebooted it")]


@pytest.mark.parametrize(
    "body",
    [
        {"project": "ops", "summary": "x", "reporter": "a"},
        {"project": "OPS", "summary": "", "reporter": "a"},
        {"project": "OPS", "summary": "x", "reporter": "a", "priority": "urgent"},
        {"project": "OPS", "summary": "x", "reporter": "a", "unknown": 1},
    ],
)
async def test_invalid_ticket_is_refused_with_422_validation_error(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/tickets", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


# --- CRM -------------------------------------------------------------------------------------------------


async def test_contact_is_found_by_email_and_updated(client: httpx.AsyncClient) -> None:
    [alice] = (await client.get("/crm/contacts", params={"email": "Alice@Acme.example"})).json()["items"]

    response = await client.patch(f"/crm/contacts/{alice['id']}", json={"title": "COO", "phone": "+1 555 0100"})

    assert response.status_code == 200
    assert response.json()["change"]["changes"] == {
        "phone": [None, "+1 555 0100"],
        "title": ["Head of Ops", "COO"],
    }
    assert (await client.get(f"/crm/contacts/{alice['id']}")).json()["title"] == "COO"


async def test_locked_contact_refuses_update_with_409_and_is_unchanged(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    [carol] = (await client.get("/crm/contacts", params={"email": "carol@globex.example"})).json()["items"]

    response = await client.patch(f"/crm/contacts/{carol['id']}", json={"title": "CEO"})

    assert carol["locked"] is True
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "record_locked"
    assert (await client.get(f"/crm/contacts/{carol['id']}")).json()["title"] == "CFO"
    assert count_rows("crm_contact_changes") == 0


async def test_contact_update_must_change_something(client: httpx.AsyncClient) -> None:
    assert (await client.patch("/crm/contacts/1", json={})).status_code == 422
    assert (await client.patch("/crm/contacts/1", json={"name": None})).status_code == 422


async def test_account_lookup_by_domain(client: httpx.AsyncClient) -> None:
    [globex] = (await client.get("/crm/accounts", params={"domain": "globex.example"})).json()["items"]

    assert globex["locked"] is True
    assert (await client.get(f"/crm/accounts/{globex['id']}")).json() == globex


async def test_duplicate_contact_email_is_refused(client: httpx.AsyncClient) -> None:
    body = {"account_id": 1, "email": "bob@acme.example", "name": "Bob Again"}

    response = await client.post("/crm/contacts", json=body)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "contact_exists"


# --- billing ---------------------------------------------------------------------------------------------


async def test_refunds_accumulate_until_the_charge_is_exhausted(client: httpx.AsyncClient) -> None:
    first = await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 4000})
    rest = await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 999})
    over = await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 1})

    assert (first.status_code, rest.status_code) == (201, 201)
    assert over.status_code == 409
    error = over.json()["error"]
    assert error["code"] == "refund_exceeds_charge"
    assert error["details"]["refundable_cents"] == 0
    assert (await client.get("/billing/charges/1")).json()["refunded_cents"] == 4999


async def test_refund_above_the_charged_amount_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    response = await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 5000})

    assert response.status_code == 409
    assert response.json()["error"]["details"] == {
        "charge_id": 1,
        "charge_amount_cents": 4999,
        "refunded_cents": 0,
        "refundable_cents": 4999,
        "requested_cents": 5000,
    }
    assert count_rows("billing_refunds") == 0
    assert count_rows("write_log") == 0


async def test_refund_for_unknown_charge_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/billing/refunds", json={"charge_id": 404, "amount_cents": 1})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "charge_not_found"


async def test_new_customer_can_be_charged_and_found_by_email(client: httpx.AsyncClient) -> None:
    customer = (await client.post("/billing/customers", json={"email": "dan@initech.example", "name": "Dan"})).json()
    charge = await client.post("/billing/charges", json={"customer_id": customer["id"], "amount_cents": 700})

    assert charge.status_code == 201
    assert (await client.get("/billing/customers", params={"email": "dan@initech.example"})).json()["items"] == [
        customer
    ]
    charges = (await client.get("/billing/charges", params={"customer_id": customer["id"]})).json()["items"]
    assert [c["amount_cents"] for c in charges] == [700]


# --- access ----------------------------------------------------------------------------------------------


async def test_privileged_role_without_approval_is_refused(client: httpx.AsyncClient) -> None:
    body = {"user": "bob@acme.example", "system": "aws-prod", "role": "admin", "reason": "incident"}

    refused = await client.post("/access/grants", json=body)
    approved = await client.post("/access/grants", json={**body, "approval_ref": "SEC-42"})

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "approval_required"
    assert approved.status_code == 201
    assert approved.json()["active"] is True


async def test_duplicate_active_grant_is_refused(client: httpx.AsyncClient) -> None:
    body = {"user": "alice@acme.example", "system": "github", "role": "member"}

    response = await client.post("/access/grants", json=body)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "grant_exists"


async def test_revoked_grant_is_inactive_and_cannot_be_revoked_twice(client: httpx.AsyncClient) -> None:
    body = {"user": "alice@acme.example", "system": "github", "role": "member", "reason": "left the team"}

    revoked = await client.post("/access/revocations", json=body)
    again = await client.post("/access/revocations", json=body)

    assert revoked.status_code == 201
    assert revoked.json()["grant"]["active"] is False
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "no_active_grant"
    active = (await client.get("/access/grants", params={"user": "alice@acme.example", "active": True})).json()
    assert active["items"] == []


async def test_role_can_be_granted_again_after_revocation(client: httpx.AsyncClient) -> None:
    body = {"user": "alice@acme.example", "system": "github", "role": "member"}
    await client.post("/access/revocations", json=body)

    regranted = await client.post("/access/grants", json=body)

    assert regranted.status_code == 201
    grants = (await client.get("/access/grants", params={"user": "alice@acme.example"})).json()["items"]
    assert [g["active"] for g in grants] == [False, True]
