"""A refund run end to end: it parks in needs_approval, a finance approval resumes it, the one write
lands once. Real nats-server, router, executor and approval service processes."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from keel_contracts.approvals import payload_hash
from keel_executor.tools.demo import ledger_counts
from tests.conftest import StackFactory, eventually
from tests.integration.approval_support import (
    api_get,
    api_post,
    approval_stack,
    decisions,
    router_gates_or_skip,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def router_with_approvals() -> None:
    router_gates_or_skip()


async def _status(keel: object, run_id: str) -> str | None:
    view = await keel.run(run_id)  # type: ignore[attr-defined]
    return None if view is None else str(view.status)


async def test_a_refund_parks_for_finance_and_one_approval_runs_the_write_once(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    stack, base, tokens = await approval_stack(keel_stack, tmp_path, fiona=["finance"], sam=["security"])
    async with await stack.client() as keel:
        answer = await keel.trigger("refund_approval", {"customer": "acme", "amount": 42}, "refund-acme-1")
        run_id = answer.run_id
        await eventually(lambda: _is(keel, run_id, "needs_approval"))
        listed = await eventually(
            lambda: [
                a
                for a in api_get(base, tokens["fiona"], "/api/v1/approvals").json()["approvals"]
                if a["run_id"] == run_id
            ]
        )
        [approval] = listed
        detail = api_get(base, tokens["fiona"], f"/api/v1/approvals/{approval['approval_id']}").json()
        assert detail["payload"] == {"account": "refund-acme", "amount": 42}
        assert detail["payload_hash"] == payload_hash(detail["payload"])
        assert ledger_counts(stack.ledger_url, run_id) == {"invocations": 0, "effects": 0}

        path = f"/api/v1/approvals/{approval['approval_id']}/approve"
        refused = api_post(base, tokens["sam"], path, {"payload_hash": detail["payload_hash"]})
        assert refused.status_code == 403
        granted = api_post(base, tokens["fiona"], path, {"payload_hash": detail["payload_hash"]})
        assert granted.status_code == 200, granted.text

        await eventually(lambda: _is(keel, run_id, "done"), timeout=90)
        assert ledger_counts(stack.ledger_url, run_id) == {"invocations": 1, "effects": 1}
        again = api_post(base, tokens["fiona"], path, {"payload_hash": detail["payload_hash"]})
        assert again.status_code == 409
    async with await nats.connect(stack.nats_url) as nc:
        assert [d.type for d in await decisions(nc)] == ["approval_granted"]


async def _is(keel: object, run_id: str, status: str) -> bool:
    return await _status(keel, run_id) == status
