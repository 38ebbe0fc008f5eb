"""The executor against a real system of record: the sandbox server and its database, real nats-server,
real router and executor processes. Every test counts the writes in the sandbox's own database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keel_contracts.errors import ErrorClass
from keel_sandbox.testing import SandboxProcess
from tests.conftest import StackFactory, StackHandle

pytestmark = pytest.mark.integration

WORKFLOW = "sandbox_write"


@pytest.fixture
async def stack(keel_stack: StackFactory, sandbox: SandboxProcess) -> StackHandle:
    return await keel_stack(env={"KEEL_HTTP_SANDBOX_URL": sandbox.base_url})


def arm(sandbox: SandboxProcess, fault: str, count: int | None = 1, path: str = "/tickets") -> None:
    answer = httpx.post(
        f"{sandbox.base_url}/_faults",
        json={"fault": fault, "method": "POST", "path_prefix": path, "count": count},
        timeout=10,
    )
    answer.raise_for_status()


def ticket(summary: str) -> dict[str, Any]:
    body = {"project": "OPS", "summary": summary, "reporter": "keel"}
    return {"method": "POST", "connection": "sandbox", "path": "/tickets", "body": body}


async def run_to_end(stack: StackHandle, data: dict[str, Any], intent: str) -> tuple[Any, list[Any]]:
    async with await stack.client() as keel:
        answer = await keel.trigger(WORKFLOW, data, intent, wait=True, timeout=120)
        timeline = await keel.timeline(answer.run_id)
    return answer, timeline


def of_type(timeline: list[Any], kind: str) -> list[Any]:
    return [entry.event for entry in timeline if entry.type == kind]


def key_of(timeline: list[Any]) -> str:
    keys = {event.body.idempotency_key for event in of_type(timeline, "step_scheduled")}
    assert len(keys) == 1, keys  # every attempt of the write carries the same key
    return keys.pop()


async def test_429_and_503_are_retried_with_the_configured_backoff_and_the_write_lands_once(
    stack: StackHandle, sandbox: SandboxProcess
) -> None:
    arm(sandbox, "429:2")  # fires first: 429 with Retry-After: 2
    arm(sandbox, "503")

    answer, timeline = await run_to_end(stack, ticket("transient"), "transient-1")

    assert answer.status == "done", stack.logs()
    failures = of_type(timeline, "step_failed")
    assert [f.body.error_class for f in failures] == [ErrorClass.TRANSIENT, ErrorClass.TRANSIENT]
    assert failures[0].body.retry_after_seconds == 2.0
    retries = of_type(timeline, "retry_scheduled")
    # Retry 1: the plan said 1 s, the system's Retry-After said 2 s, so 2 s. Retry 2: 1 * 1.5.
    assert [r.body.delay_seconds for r in retries] == [2.0, 1.5]
    assert [e.attempt for e in of_type(timeline, "step_scheduled")] == [1, 2, 3]
    key = key_of(timeline)
    assert sandbox.count("tickets", idempotency_key=key) == 1
    assert sandbox.count("tickets", run_id=answer.run_id) == 1
    assert sandbox.count("write_log", idempotency_key=key) == 1


async def test_a_write_that_times_out_is_resolved_without_a_second_write(
    stack: StackHandle, sandbox: SandboxProcess
) -> None:
    # The answer comes after the adapter's 3 s read timeout: the write's outcome is unknown to Keel.
    arm(sandbox, "latency:6000")

    answer, timeline = await run_to_end(stack, ticket("slow"), "timeout-1")

    assert answer.status == "done", stack.logs()
    key = key_of(timeline)
    # However the race between the slow original and the verified resend went, one ticket exists (and
    # the original, if still being served, carries the same key: it can only replay that one write).
    assert sandbox.count("tickets", run_id=answer.run_id) == 1
    assert sandbox.count("write_log", idempotency_key=key) == 1


async def test_dropped_connections_are_verified_resent_then_retried_with_backoff_and_land_once(
    stack: StackHandle, sandbox: SandboxProcess
) -> None:
    # Attempt 1: dropped, verify finds nothing, the resend is dropped too, verify finds nothing: the
    # attempt fails as unknown_outcome (bounded). Attempt 2, after the configured 1 s, lands.
    arm(sandbox, "drop", count=2)

    answer, timeline = await run_to_end(stack, ticket("dropped"), "drop-1")

    assert answer.status == "done", stack.logs()
    (failure,) = of_type(timeline, "step_failed")
    assert failure.body.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert "verification could not decide" in failure.body.message
    (retry,) = of_type(timeline, "retry_scheduled")
    assert retry.body.delay_seconds == 1.0
    assert sandbox.count("tickets", run_id=answer.run_id) == 1
    assert sandbox.count("write_log", idempotency_key=key_of(timeline)) == 1


@pytest.mark.parametrize("fault", ["commit_then_timeout:20000", "commit_then_500"])
async def test_a_committed_write_without_a_clean_answer_is_verified_and_recorded_as_the_one_write(
    stack: StackHandle, sandbox: SandboxProcess, fault: str
) -> None:
    # The sandbox commits the ticket, then never answers (the read times out) or answers 500.
    arm(sandbox, fault)

    answer, timeline = await run_to_end(stack, ticket("committed"), f"committed-{fault}")

    assert answer.status == "done", stack.logs()
    assert of_type(timeline, "step_failed") == []  # resolved inside the attempt by the read-back
    (success,) = of_type(timeline, "step_succeeded")
    output = success.body.output
    assert output["verified"] is True
    key = key_of(timeline)
    assert sandbox.count("tickets", idempotency_key=key) == 1
    assert output["key"].startswith("OPS-")  # the ticket the first request created
    assert sandbox.count("write_log", idempotency_key=key) == 1


@pytest.mark.parametrize(
    ("data", "error_class", "table"),
    [
        # 422: the request is invalid; nothing is written.
        (
            {"method": "POST", "connection": "sandbox", "path": "/tickets", "body": {"project": "ops"}},
            ErrorClass.PERMANENT,
            "tickets",
        ),
        # 409: the system refuses on its own rule (admin needs an approval reference); nothing written.
        (
            {
                "method": "POST",
                "connection": "sandbox",
                "path": "/access/grants",
                "body": {"user": "mallory@acme.example", "system": "github", "role": "admin"},
            },
            ErrorClass.BUSINESS_RULE,
            "access_grants",
        ),
    ],
    ids=["permanent", "business_rule"],
)
async def test_refusals_stop_at_once_with_their_class_and_write_nothing(
    stack: StackHandle, sandbox: SandboxProcess, data: dict[str, Any], error_class: ErrorClass, table: str
) -> None:
    answer, timeline = await run_to_end(stack, data, f"refused-{error_class}")

    assert answer.status == "failed", stack.logs()
    (failure,) = of_type(timeline, "step_failed")
    assert failure.body.error_class is error_class
    assert of_type(timeline, "retry_scheduled") == []
    assert len(of_type(timeline, "step_scheduled")) == 1
    assert of_type(timeline, "run_failed")[0].body.error_class is error_class
    assert sandbox.count(table, run_id=answer.run_id) == 0


@pytest.fixture
async def refusing_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A system that answers every request 401, counting what it was sent."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        body = b'{"error": {"code": "token_expired", "message": "the API token expired"}}'
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", requests
    finally:
        server.close()


async def test_an_auth_refusal_stops_at_once(keel_stack: StackFactory, refusing_server: tuple[str, list[bytes]]):
    url, requests = refusing_server
    stack = await keel_stack(env={"KEEL_HTTP_LOCKED_URL": url})
    data = {"method": "POST", "connection": "locked", "path": "/things", "body": {"a": 1}}

    answer, timeline = await run_to_end(stack, data, "auth-1")

    assert answer.status == "failed", stack.logs()
    (failure,) = of_type(timeline, "step_failed")
    assert failure.body.error_class is ErrorClass.AUTH
    assert "401 token_expired" in failure.body.message
    assert of_type(timeline, "retry_scheduled") == []
    assert len(requests) == 1
    assert b"idempotency-key: " in requests[0].lower()
    assert b"traceparent: 00-" in requests[0].lower()
