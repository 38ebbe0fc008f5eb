"""Adapters for the sandbox systems of record (`keel_sandbox`: tickets, CRM, billing, access).

They are built on the generic HTTP adapter (`keel_executor.tools.http.HttpTool`): every call carries the
attempt's identity (Idempotency-Key on writes, run and step ids, traceparent), so a write retried under
the same key lands once, and errors are classified by `keel_executor.classify_http`:

- nothing was sent, or the system said it processed nothing (connect error, 429, 502, 503): transient;
- a write was sent and no clean answer came (read timeout, dropped connection, 500): unknown outcome,
  which the executor resolves with the adapter's `verify` read-back (lookup by idempotency key);
- 409 (a business rule refused it; nothing written): business_rule; 401/403: auth; other 4xx: permanent.

The base URL is `KEEL_SANDBOX_URL` (default http://127.0.0.1:8765).
"""

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import JsonValue

from keel_executor.errors import PermanentError
from keel_executor.tools.http import HttpTool
from keel_executor.tools.registry import ToolContext

DEFAULT_SANDBOX_URL = "http://127.0.0.1:8765"

#: Ticket priorities as the example workflows name them, mapped to the tracker's own.
PRIORITIES = {"low": "low", "normal": "medium", "medium": "medium", "high": "high", "urgent": "highest"}


#: The sandbox is one HTTP system of record: the generic adapter sends Keel's headers (the idempotency
#: key on writes) and classifies every answer and network failure (see `classify_http`).
SANDBOX = HttpTool(DEFAULT_SANDBOX_URL, base_url_env="KEEL_SANDBOX_URL")


async def request(
    ctx: ToolContext,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """One HTTP call to the sandbox, its JSON answer, or a classified error."""
    return (await SANDBOX.request(ctx, method, path, json=body, params=params)).body


def _int(data: dict[str, JsonValue], field: str) -> int:
    value = data.get(field)
    if isinstance(value, bool):
        raise PermanentError(f"{field} must be an integer, got {value!r}")
    try:
        return int(str(value))
    except ValueError:
        raise PermanentError(f"{field} must be an integer, got {value!r}") from None


#: What a write adapter returns for the record it created, from the system's JSON for that record.
Output = Callable[[dict[str, Any]], dict[str, JsonValue]]


async def _find(ctx: ToolContext, path: str, key: str, output: Output) -> dict[str, JsonValue]:
    """A verify read-back: the record a write with idempotency key `key` created, if any, in the shape the
    write itself returns. A found record becomes the step's output, so a write whose answer was lost must
    give the workflow the same fields, with the same values, as one that was answered."""
    items = (await request(ctx, "GET", path, params={"idempotency_key": key}))["items"]
    return {"found": bool(items), "record": output(items[0]) if items else None}


def _with_verify(
    tool: Callable[[ToolContext, dict[str, JsonValue]], Awaitable[dict[str, JsonValue]]], path: str, output: Output
) -> None:
    """Give a write adapter its own read-back: look the write up by the attempt's idempotency key."""

    async def verify(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return await _find(ctx, path, ctx.idempotency_key, output)

    tool.verify = verify  # type: ignore[attr-defined]


# --- CRM -------------------------------------------------------------------------------------------------
async def crm_lookup_contact(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The contact with `email` and its account's tier. No such contact is a permanent error."""
    email = data.get("email")
    if not isinstance(email, str) or not email:
        raise PermanentError("crm.lookup_contact needs an email")
    items = (await request(ctx, "GET", "/crm/contacts", params={"email": email}))["items"]
    if not items:
        raise PermanentError(f"crm.lookup_contact: no contact with email {email}")
    contact = items[0]
    account = await request(ctx, "GET", f"/crm/accounts/{contact['account_id']}")
    return {
        "id": contact["id"],
        "name": contact["name"],
        "email": contact["email"],
        "account": account["name"],
        "tier": account["tier"],
    }


# --- tickets ---------------------------------------------------------------------------------------------
async def tickets_create(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Create a ticket from `{title, priority, body, requester: {email, ...}, project?}`."""
    requester = data.get("requester")
    reporter = requester.get("email") if isinstance(requester, dict) else data.get("reporter")
    priority = PRIORITIES.get(str(data.get("priority", "normal")))
    if priority is None:
        raise PermanentError(f"tickets.create: unknown priority {data.get('priority')!r}")
    description = str(data.get("body", ""))
    if isinstance(requester, dict):
        extra = ", ".join(f"{k}={v}" for k, v in requester.items() if k != "email" and v is not None)
        description += f"\n\nRequester: {reporter}" + (f" ({extra})" if extra else "")
    ticket = await request(
        ctx,
        "POST",
        "/tickets",
        body={
            "project": str(data.get("project", "SUP")),
            "summary": str(data.get("title", "")),
            "description": description,
            "priority": priority,
            "reporter": str(reporter or "unknown"),
        },
    )
    return _ticket_output(ticket)


def _ticket_output(ticket: dict[str, Any]) -> dict[str, JsonValue]:
    return {"id": ticket["key"], "key": ticket["key"], "ticket_id": ticket["id"], "status": ticket["status"]}


_with_verify(tickets_create, "/tickets", _ticket_output)


# --- billing ---------------------------------------------------------------------------------------------
async def billing_get_charge(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """A charge, how much of it is still refundable, and its customer's email."""
    charge = await request(ctx, "GET", f"/billing/charges/{_int(data, 'charge_id')}")
    customer = await request(ctx, "GET", f"/billing/customers/{charge['customer_id']}")
    return {
        "id": charge["id"],
        "amount_cents": charge["amount_cents"],
        "refunded_cents": charge["refunded_cents"],
        "refundable_cents": charge["amount_cents"] - charge["refunded_cents"],
        "currency": charge["currency"],
        "customer_email": customer["email"],
    }


async def billing_refund(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Refund `amount_cents` of `charge_id` (`reason`: requested_by_customer, duplicate or fraudulent)."""
    body: dict[str, Any] = {"charge_id": _int(data, "charge_id"), "amount_cents": _int(data, "amount_cents")}
    if "reason" in data:
        body["reason"] = data["reason"]
    return _refund_output(await request(ctx, "POST", "/billing/refunds", body=body))


def _refund_output(refund: dict[str, Any]) -> dict[str, JsonValue]:
    return {k: refund[k] for k in ("id", "charge_id", "amount_cents", "currency", "status", "reason")}


_with_verify(billing_refund, "/billing/refunds", _refund_output)


async def billing_find_refund(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Verify read-back of a refund: `{idempotency_key}` -> `{found, record}`."""
    key = str(data.get("idempotency_key", ctx.idempotency_key))
    return await _find(ctx, "/billing/refunds", key, _refund_output)


# --- access ----------------------------------------------------------------------------------------------
async def access_list_grants(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """A user's active grants, also as `groups` (`system:role`) for choice rules."""
    user = data.get("user")
    if not isinstance(user, str) or not user:
        raise PermanentError("access.list_grants needs a user")
    items = (await request(ctx, "GET", "/access/grants", params={"user": user, "active": "true"}))["items"]
    return {
        "user": user,
        "grants": [{"system": g["system"], "role": g["role"], "id": g["id"]} for g in items],
        "groups": [f"{g['system']}:{g['role']}" for g in items],
    }


async def access_grant(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Grant `role` on `system` to `user` (`group` of the form `system:role` is accepted too)."""
    system, role = data.get("system"), data.get("role")
    group = data.get("group")
    if isinstance(group, str) and ":" in group:
        system, _, role = group.partition(":")
    body: dict[str, Any] = {"user": data.get("user"), "system": system, "role": role}
    for field in ("reason", "approval_ref"):
        if data.get(field) is not None:
            body[field] = data[field]
    return _grant_output(await request(ctx, "POST", "/access/grants", body=body))


def _grant_output(grant: dict[str, Any]) -> dict[str, JsonValue]:
    return {k: grant[k] for k in ("id", "user", "system", "role", "active")}


_with_verify(access_grant, "/access/grants", _grant_output)


async def access_find_grant(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Verify read-back of a grant: `{idempotency_key}` -> `{found, record}`."""
    key = str(data.get("idempotency_key", ctx.idempotency_key))
    return await _find(ctx, "/access/grants", key, _grant_output)
