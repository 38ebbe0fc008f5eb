"""The sandbox write adapters' read-backs give the record in the shape the write returns: after an unknown
outcome the found record becomes the step's output, so `${steps.create_ticket.id}` must be the ticket key
("SUP-3") whether the write was answered or its answer was lost (found by the chaos test, where a
verified ticket run finished with `ticket_id: 3`). Driven against the sandbox app in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import JsonValue

from keel_executor.tools import sandbox as adapters
from keel_executor.tools.registry import ToolContext
from keel_sandbox.app import create_app
from keel_sandbox.db import Database


@pytest.fixture(autouse=True)
def in_process_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    database = Database(f"sqlite:///{tmp_path / 'sandbox.db'}")
    database.prepare()
    monkeypatch.setattr(adapters.SANDBOX, "_transport", httpx.ASGITransport(app=create_app(database)))
    yield
    database.dispose()


def ctx(step_id: str) -> ToolContext:
    return ToolContext(
        run_id="r-readback",
        workflow="chaos",
        step_id=step_id,
        attempt=1,
        tenant="default",
        correlation_id="0af7651916cd43dd8448eb211c80319c",
        idempotency_key=f"keel-r-readback-{step_id}-1",
        timeout_seconds=30,
        data_dir="/nonexistent",
    )


TICKET: dict[str, JsonValue] = {
    "title": "The export is broken",
    "priority": "normal",
    "body": "From alice in Slack",
    "requester": {"email": "alice@acme.example", "tier": "enterprise"},
}
REFUND: dict[str, JsonValue] = {"charge_id": "2", "amount_cents": 10, "reason": "requested_by_customer"}
GRANT: dict[str, JsonValue] = {"user": "dana@acme.example", "group": "github:member", "reason": "onboarding"}


@pytest.mark.parametrize(
    ("write", "data"),
    [(adapters.tickets_create, TICKET), (adapters.billing_refund, REFUND), (adapters.access_grant, GRANT)],
    ids=["tickets.create", "billing.refund", "access.grant"],
)
async def test_a_write_found_by_its_read_back_has_the_output_the_write_returned(write: object, data: dict) -> None:
    context = ctx(write.__name__)  # type: ignore[attr-defined]
    assert await write.verify(context, data) == {"found": False, "record": None}  # type: ignore[attr-defined]

    written = await write(context, data)  # type: ignore[operator]

    assert await write.verify(context, data) == {"found": True, "record": written}  # type: ignore[attr-defined]


async def test_a_ticket_found_by_its_read_back_is_named_by_its_key_as_when_it_was_created() -> None:
    context = ctx("create_ticket")
    created = await adapters.tickets_create(context, TICKET)
    found = await adapters.tickets_create.verify(context, TICKET)  # type: ignore[attr-defined]
    assert created["id"] == found["record"]["id"] == created["key"]
    assert str(created["id"]).startswith("SUP-")


async def test_the_workflow_verify_tools_answer_in_the_write_s_shape_too() -> None:
    refund_ctx, grant_ctx = ctx("refund"), ctx("grant")
    refund = await adapters.billing_refund(refund_ctx, REFUND)
    grant = await adapters.access_grant(grant_ctx, GRANT)
    key = {"idempotency_key": refund_ctx.idempotency_key}
    assert await adapters.billing_find_refund(refund_ctx, key) == {"found": True, "record": refund}
    key = {"idempotency_key": grant_ctx.idempotency_key}
    assert await adapters.access_find_grant(grant_ctx, key) == {"found": True, "record": grant}
