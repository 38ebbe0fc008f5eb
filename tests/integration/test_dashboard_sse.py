"""The dashboard's SSE bridge against a real stack: a run's timeline streams live, and a reconnect with
`Last-Event-ID` yields exactly the events after that sequence (no gap, no duplicate)."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keel_contracts.envelope import run_id_for
from tests.conftest import ALL_SERVICES, StackFactory, eventually

pytestmark = pytest.mark.integration

DEMO_EVENTS = 8  # run_started, 3 x (step_scheduled, step_succeeded), run_completed


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream into {"id", "event", "data"} dicts (comments and retry lines skipped)."""
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in current:
                yield current
            current = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                current["data"] = json.loads(value)
            elif field in ("id", "event"):
                current[field] = value


async def read_events(
    client: httpx.AsyncClient, url: str, count: int, last_event_id: int | None = None
) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    got: list[dict[str, Any]] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(response):
            assert event["event"] == "run_event"
            assert int(event["id"]) == event["data"]["seq"]
            got.append(event["data"])
            if len(got) == count:
                break
    return got


async def test_a_run_timeline_streams_live_and_resumes_after_last_event_id(keel_stack: StackFactory) -> None:
    stack = await keel_stack(services=ALL_SERVICES)
    base = stack.stack.dashboard_url
    assert base is not None
    run_id = run_id_for("default", "demo", "sse-1")
    url = f"{base}api/runs/{run_id}/events"
    async with httpx.AsyncClient(timeout=30) as http, await stack.client() as keel:
        # Subscribed before the run exists: the first events arrive live.
        first_two = asyncio.create_task(read_events(http, url, 2))
        await asyncio.sleep(0.5)
        answer = await keel.trigger("demo", {}, "sse-1", wait=True)
        assert answer.run_id == run_id and answer.status == "done", stack.logs()
        head = await asyncio.wait_for(first_two, 30)
        assert [e["type"] for e in head] == ["run_started", "step_scheduled"]

        stored = [e.seq for e in await keel.timeline(run_id)]
        assert len(stored) == DEMO_EVENTS

        # Reconnect as an EventSource does: exactly what follows the last id, in order.
        rest = await asyncio.wait_for(read_events(http, url, DEMO_EVENTS - 2, last_event_id=head[-1]["seq"]), 30)
        assert [e["seq"] for e in head + rest] == stored
        assert rest[-1]["type"] == "run_completed"
        assert all(e["run_id"] == run_id and e["workflow"] == "demo" for e in rest)

        # `?after=` is the same for clients that cannot set headers; the header wins when both are set.
        tail = await asyncio.wait_for(read_events(http, f"{url}?after={stored[-2]}", 1), 30)
        assert [e["seq"] for e in tail] == stored[-1:]
        tail = await asyncio.wait_for(read_events(http, f"{url}?after=0", 1, last_event_id=stored[-2]), 30)
        assert [e["seq"] for e in tail] == stored[-1:]

        bad = await http.get(url, headers={"Last-Event-ID": "seven"})
        assert bad.status_code == 400

        # The board lists the run as done, and the run endpoint links to the audit reconstruction.
        board = await eventually(lambda: _done_on_board(http, base, run_id))
        assert board["counts"]["done"] >= 1
        shown = (await http.get(f"{base}api/runs/{run_id}")).json()
        assert shown["run"]["status"] == "done"
        assert shown["links"]["audit_command"] == f"keel audit show {run_id}"
        assert shown["links"]["approval_inbox"].endswith("/inbox")


async def _done_on_board(http: httpx.AsyncClient, base: str, run_id: str) -> dict[str, Any] | None:
    board = (await http.get(f"{base}api/runs", params={"state": "done", "workflow": "demo"})).json()
    return board if any(r["run_id"] == run_id for r in board["runs"]) else None
