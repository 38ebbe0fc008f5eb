"""Helpers for the approval integration and browser tests: publishing requests as the router would,
reading decisions back, approvers in the service's store, and a PostgreSQL schema per test."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from pydantic import JsonValue

from keel_approval.approvers import ApproverDirectory
from keel_approval.db import Database
from keel_contracts import subjects as s
from keel_contracts.approvals import ApprovalRequested, ApprovalRequestedBody, ApprovalTarget, payload_hash
from keel_contracts.codec import decode_event, encode
from keel_contracts.envelope import Message
from keel_shared.eventstore import EventStore

REFUND: dict[str, JsonValue] = {"charge_id": "ch_42", "amount": 4200, "currency": "EUR"}

REFUND_WORKFLOW = """\
name: refund_approval
version: 1
description: A refund that finance must approve before the one write to the ledger.
steps:
  - id: approve_refund
    kind: approval
    role: finance
    approves: refund
    summary: "Refund ${input.amount} to ${input.customer}"
    expires_after_seconds: 3600
    escalate_to: escalated
  - id: refund
    kind: tool
    tool: demo.ledger
    side_effect: write
    action_class: [money]
    input: {account: "refund-${input.customer}", amount: "${input.amount}"}
    end: true
  - id: escalated
    kind: fail
    error: approval_expired
"""


def router_gates_or_skip() -> None:
    """Skip unless the router emits approval requests (its approval gate, issue 3)."""
    try:
        import keel_router.gates  # noqa: F401
    except ImportError:
        reason = "the router does not emit approval requests yet (keel_router.gates is missing)"
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)


def refund_request(
    approval_id: str, run_id: str, *, expires_in: float = 3600, requested_by: str = "agent:refund-bot"
) -> ApprovalRequested:
    now = datetime.now(UTC)
    return ApprovalRequested(
        run_id=run_id,
        workflow="refund",
        step_id="approve_refund",
        correlation_id=f"corr-{run_id}",
        actor="router",
        dedupe_key=f"{run_id}:approval:{approval_id}:requested",
        body=ApprovalRequestedBody(
            approval_id=approval_id,
            roles=["finance"],
            approves_step="issue_refund",
            tool="billing.refund",
            payload=REFUND,
            payload_hash=payload_hash(REFUND),
            before={"charge_id": "ch_42", "amount": 0, "currency": "EUR"},
            target=ApprovalTarget(
                system="billing", operation="refund", record="ch_42", link="https://billing.test/ch_42"
            ),
            summary="Refund 42.00 EUR for a double charge",
            evidence={"ticket": "T-42"},
            reason="policy requires approval for money: money -> finance",
            requested_by=requested_by,
            expires_at=now + timedelta(seconds=expires_in),
            escalate_to="manager_review",
        ),
    )


async def publish_request(nc: Client, event: ApprovalRequested) -> None:
    subject = s.event_subject(event.workflow, event.run_id, s.ROUTER, event.type)
    await nc.jetstream().publish(subject, encode(event), headers={"Nats-Msg-Id": event.dedupe_key})


async def decisions(nc: Client) -> list[Message]:
    store = EventStore(nc, nc.jetstream(), s.APPROVAL)
    return [decode_event(e.data) for e in await store.read(s.emitter_filter(s.APPROVAL))]


def add_approvers(db_url: str, **roles: list[str]) -> dict[str, str]:
    db = Database(db_url)
    try:
        db.migrate()
        directory = ApproverDirectory(db, lambda: datetime.now(UTC))
        return {name: directory.add(name, r) for name, r in roles.items()}
    finally:
        db.dispose()


def api_get(base: str, token: str, path: str) -> httpx.Response:
    return httpx.get(base + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def api_post(base: str, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def approval_stack(keel_stack: Any, tmp_path: Path, **roles: list[str]) -> tuple[Any, str, dict[str, str]]:
    """Router, executor and approval service with the refund workflow, and approvers with these roles:
    (stack, approval service URL, tokens by name)."""
    (tmp_path / "workflows").mkdir(exist_ok=True)
    (tmp_path / "workflows" / "refund_approval.yaml").write_text(REFUND_WORKFLOW)
    stack = await keel_stack(services=("router", "executor", "approval"))
    base = stack.stack.approval_url
    assert base is not None
    return stack, base, add_approvers(f"sqlite:///{stack.data_dir / 'approvals.db'}", **roles)
