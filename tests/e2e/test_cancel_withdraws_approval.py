"""Cancelling a run that waits for a refund approval withdraws the approval: a finance approver who
tries to approve it afterwards is refused with `withdrawn` (CLI and API), History says so, and the
refund is never written (decision 026)."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import httpx
import pytest

from keel_executor.tools.demo import ledger_counts
from tests.conftest import StackFactory, eventually
from tests.integration.approval_support import api_get, approval_stack
from tests.integration.router_kit import approval_request, keel_cli, reaches

pytestmark = pytest.mark.e2e


async def keel(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "keel_cli.main", *args, stdout=PIPE, stderr=PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_cancelled_runs_approval_is_withdrawn_and_approving_it_is_refused(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    stack, base, tokens = await approval_stack(keel_stack, tmp_path, fiona=["finance"], frank=["finance"])
    async with await stack.client() as client:
        answer = await client.trigger("refund_approval", {"customer": "initech", "amount": 12}, "refund-initech-1")
        await reaches(client, answer.run_id, "needs_approval")
        request = await approval_request(client, answer.run_id)
        approval_id = request.body.approval_id
        path = "/api/v1/approvals/" + httpx.URL(approval_id).raw_path.decode()
        await eventually(lambda: api_get(base, tokens["fiona"], path).status_code == 200)

        code, out, err = await keel_cli(
            "run", "cancel", answer.run_id, "--reason", "customer withdrew", url=stack.nats_url
        )
        assert code == 0, (out, err)
        await reaches(client, answer.run_id, "cancelled")

        def withdrawn() -> bool:
            return api_get(base, tokens["fiona"], path).json()["status"] == "withdrawn"

        await eventually(withdrawn)
        # The CLI: a second finance approver tries anyway.
        code, out, err = await keel("approve", approval_id, "--token", tokens["frank"], "--url", base)
        assert code != 0 and "withdrawn" in err, (code, out, err)
        # The API answers 409 `withdrawn`.
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            refused = await http.post(
                path + "/approve",
                json={"payload_hash": request.body.payload_hash},
                headers={"Authorization": f"Bearer {tokens['fiona']}"},
            )
        assert refused.status_code == 409 and refused.json()["error"] == "withdrawn", refused.text
        # History shows the withdrawal, and by whom: the run's end, not an approver.
        doc = api_get(base, tokens["fiona"], path).json()
        assert doc["history"][-1]["what"] == "withdrawn" and doc["history"][-1]["who"] == "router", doc["history"]
        settled = api_get(base, tokens["fiona"], "/api/v1/approvals?status=settled").json()
        assert [a["status"] for a in settled["approvals"] if a["approval_id"] == approval_id] == ["withdrawn"]
        view = await client.run(answer.run_id)
        assert view is not None and view.status == "cancelled"
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 0, "effects": 0}
