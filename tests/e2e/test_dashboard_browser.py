"""The dashboard in a real browser (Debian's Chromium through Playwright): a run started during the test
appears on the board, moves to `done` on screen, and its timeline fills in live. A screenshot is kept
under test-artifacts/ for people to look at."""

import json
from pathlib import Path

import pytest

from keel_contracts.envelope import run_id_for
from tests.conftest import ALL_SERVICES, CHROMIUM_FLAGS, ROOT, StackFactory

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "test-artifacts"

# Long enough that the board shows the run before it is done.
SLOW_WORKFLOW = {
    "name": "dash_slow",
    "version": 1,
    "description": "A step that takes a few seconds, then one more.",
    "steps": [
        {"id": "think", "kind": "tool", "tool": "demo.sleep", "input": {"seconds": 3}},
        {"id": "answer", "kind": "tool", "tool": "demo.echo", "input": {"said": "<b>not markup</b>"}},
    ],
}


async def test_a_new_run_appears_and_moves_to_done_on_screen(
    keel_stack: StackFactory, tmp_path: Path, chromium: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "dash_slow.yaml").write_text(json.dumps(SLOW_WORKFLOW))  # JSON is YAML
    stack = await keel_stack(services=ALL_SERVICES)
    url = stack.stack.dashboard_url
    assert url is not None
    intent = "browser-1"
    run_id = run_id_for("default", "dash_slow", intent)

    async with async_playwright() as p, await stack.client() as keel:
        browser = await p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)

            await keel.trigger("dash_slow", {}, intent)
            row = page.locator(f'#runs tr[data-run-id="{run_id}"]')
            await expect(row).to_be_visible(timeout=30_000)
            first_state = await row.get_attribute("data-state")
            assert first_state not in ("done", "failed", "cancelled"), first_state

            await row.click()
            await expect(page.locator("#d-run")).to_have_text(run_id)
            await expect(row).to_have_attribute("data-state", "done", timeout=60_000)
            await expect(row.locator("td.state")).to_have_text("done")
            timeline = page.locator("#timeline li")
            await expect(page.locator('#timeline li[data-type="run_completed"]')).to_have_count(1, timeout=30_000)
            types = [await li.get_attribute("data-type") for li in await timeline.all()]
            assert types[0] == "run_started" and types[-1] == "run_completed", types
            seqs = [int(await li.get_attribute("data-seq") or 0) for li in await timeline.all()]
            assert seqs == sorted(set(seqs)), seqs
            await expect(page.locator("#d-audit")).to_have_text(f"keel audit show {run_id}")
            await expect(page.locator("#inbox-link")).to_have_attribute("href", f"{stack.stack.approval_url}/inbox")
            # Run data is text, never markup.
            assert await page.locator("#timeline b").count() == 0

            # Filters: by state, and by a workflow the run is not in.
            await page.locator('#counts button[data-state="done"]').click()
            await expect(row).to_be_visible()
            await page.select_option("#f-workflow", "dash_slow")
            await expect(row).to_be_visible()
            await page.select_option("#f-state", "failed")
            await expect(row).to_have_count(0)
            await page.select_option("#f-state", "done")
            await expect(row).to_be_visible()

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not errors, errors
        finally:
            await browser.close()
