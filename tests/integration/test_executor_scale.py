"""Executors under crashes and in numbers, against the real sandbox: a SIGKILL mid-call costs no second
write, and several executor processes share one durable consumer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from keel_sandbox.testing import SandboxProcess
from tests.conftest import StackFactory, eventually

pytestmark = pytest.mark.integration


def ticket(summary: str) -> dict:
    body = {"project": "OPS", "summary": summary, "reporter": "keel"}
    return {"method": "POST", "connection": "sandbox", "path": "/tickets", "body": body}


def arm(sandbox: SandboxProcess, fault: str, count: int | None) -> None:
    answer = httpx.post(
        f"{sandbox.base_url}/_faults",
        json={"fault": fault, "method": "POST", "path_prefix": "/tickets", "count": count},
        timeout=10,
    )
    answer.raise_for_status()


def fired(sandbox: SandboxProcess) -> int:
    return int(httpx.get(f"{sandbox.base_url}/_faults", timeout=10).json()["fired_total"])


async def test_an_executor_killed_mid_call_leads_to_exactly_one_write(
    keel_stack: StackFactory, sandbox: SandboxProcess
) -> None:
    stack = await keel_stack(env={"KEEL_HTTP_SANDBOX_URL": sandbox.base_url})
    arm(sandbox, "latency:2500", count=1)  # the first call hangs long enough to be killed in
    async with await stack.client() as keel:
        answer = await keel.trigger("sandbox_write", ticket("killed"), "kill-1")
        await eventually(lambda: fired(sandbox) >= 1)  # the request reached the system of record
        stack.kill("executor")
        await stack.restart("executor")

        async def done() -> bool:
            view = await keel.run(answer.run_id)
            return view is not None and view.status in ("done", "failed")

        await eventually(done, timeout=120)
        view = await keel.run(answer.run_id)
        timeline = await keel.timeline(answer.run_id)
    assert view is not None and view.status == "done", stack.logs()
    keys = {e.event.body.idempotency_key for e in timeline if e.type == "step_scheduled"}
    assert len(keys) == 1
    # The killed call may still be served after its client died; it carries the same key, so it can only
    # ever replay the one write, never add a second.
    assert sandbox.count("tickets", run_id=answer.run_id) == 1
    assert sandbox.count("write_log", idempotency_key=keys.pop()) == 1


async def test_two_executor_processes_share_the_work(keel_stack: StackFactory, sandbox: SandboxProcess) -> None:
    # One command at a time per process, and each call slow: work must spread to both processes.
    stack = await keel_stack(
        executors=2,
        env={"KEEL_HTTP_SANDBOX_URL": sandbox.base_url, "KEEL_EXECUTOR_CONCURRENCY": "1"},
    )
    arm(sandbox, "latency:300", count=None)
    runs = 12
    async with await stack.client() as keel:
        answers = await asyncio.gather(
            *(
                keel.trigger("sandbox_write", ticket(f"spread {n}"), f"spread-{n}", wait=True, timeout=180)
                for n in range(runs)
            )
        )
        assert all(a.status == "done" for a in answers), stack.logs()
        executors = []
        for answer in answers:
            timeline = await keel.timeline(answer.run_id)
            executors += [e.event.body.executor_id for e in timeline if e.type == "step_succeeded"]
    assert len(executors) == runs
    assert len(set(executors)) == 2, executors  # both processes took commands
    for answer in answers:
        assert sandbox.count("tickets", run_id=answer.run_id) == 1
