"""A person approves a refund through the web inbox, in Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import quote

import nats
import pytest

from keel_contracts.approvals import ApprovalGranted, payload_hash
from keel_executor.tools.demo import ledger_counts
from tests.conftest import CHROMIUM_FLAGS, StackFactory, eventually
from tests.integration.approval_support import (
    REFUND,
    REFUND_WORKFLOW,
    add_approvers,
    api_get,
    decisions,
    publish_request,
    refund_request,
    router_gates_or_skip,
)
from tests.integration.router_kit import approval_request

pytestmark = pytest.mark.e2e


async def test_a_finance_approver_approves_a_refund_in_the_inbox(keel_stack: StackFactory, chromium: Path) -> None:
    from playwright.async_api import async_playwright

    stack = await keel_stack(services=("router", "executor", "approval"))
    base = stack.stack.approval_url
    assert base is not None
    tokens = add_approvers(f"sqlite:///{stack.data_dir / 'approvals.db'}", fiona=["finance"])
    async with await nats.connect(stack.nats_url) as nc:
        request = refund_request("refund/ch_42:1", "run-inbox")
        await publish_request(nc, request)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/inbox")
                assert page.url.endswith("/inbox/login")
                await page.fill("input[name=token]", tokens["fiona"])
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/inbox")

                link = page.get_by_role("link", name="Refund 42.00 EUR for a double charge")
                for _ in range(100):  # the request reaches the store through the stream
                    if await link.count():
                        break
                    await page.wait_for_timeout(200)
                    await page.reload()
                await link.click()
                await page.wait_for_url(f"{base}/inbox/approvals/{quote('refund/ch_42:1', safe='')}")

                assert await page.locator("#payload-hash").inner_text() == payload_hash(REFUND)
                assert '"amount": 4200' in await page.locator("#payload").inner_text()
                assert "changed" in await page.locator("#diff").inner_text()
                assert "agent:refund-bot" in await page.content()

                await page.fill("#approve-form textarea[name=reason]", "checked against T-42")
                await page.click("#approve")
                await page.wait_for_load_state()
                assert (await page.locator("#status").text_content() or "").strip() == "approved"
                assert "checked against T-42" in await page.locator("#history").inner_text()
            finally:
                await browser.close()

        [grant] = await eventually(lambda: decisions(nc))
        assert isinstance(grant, ApprovalGranted)
        assert grant.body.approval_id == "refund/ch_42:1" and grant.body.payload_hash == payload_hash(REFUND)
        assert grant.body.decided_by == ["fiona"]


async def test_an_inbox_approval_resumes_a_parked_refund_run_to_the_end(
    keel_stack: StackFactory, chromium: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    router_gates_or_skip()
    (tmp_path / "workflows").mkdir(exist_ok=True)
    (tmp_path / "workflows" / "refund_approval.yaml").write_text(REFUND_WORKFLOW)
    stack = await keel_stack(services=("router", "executor", "approval"))
    base = stack.stack.approval_url
    assert base is not None
    tokens = add_approvers(f"sqlite:///{stack.data_dir / 'approvals.db'}", fiona=["finance"])
    async with await stack.client() as keel:
        answer = await keel.trigger("refund_approval", {"customer": "globex", "amount": 17}, "refund-globex-1")

        async def status() -> str | None:
            view = await keel.run(answer.run_id)
            return None if view is None else str(view.status)

        await eventually(lambda: _equals(status(), "needs_approval"))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/inbox/login")
                await page.fill("input[name=token]", tokens["fiona"])
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/inbox")
                link = page.get_by_role("link", name="Refund 17 to globex")
                for _ in range(100):
                    if await link.count():
                        break
                    await page.wait_for_timeout(200)
                    await page.reload()
                await link.click()
                assert '"account": "refund-globex"' in await page.locator("#payload").inner_text()
                await page.click("#approve")
                await page.wait_for_load_state()
                assert (await page.locator("#status").text_content() or "").strip() == "approved"
            finally:
                await browser.close()
        await eventually(lambda: _equals(status(), "done"), timeout=90)
        request = await approval_request(keel, answer.run_id)
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}
    # History says who decided and that the write happened (read from the run's events).
    detail = api_get(base, tokens["fiona"], "/api/v1/approvals/" + quote(request.body.approval_id, safe="")).json()
    assert detail["decided_by"] == ["fiona"] and detail["write"]["state"] == "written", detail.get("write")


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
