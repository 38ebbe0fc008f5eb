"""The subscription example in docs/events.md, run as written: it follows every event of one workflow
across a nats-server restart with no gap and no duplicate, and resumes exactly after a given sequence."""

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from keel_shared.natsserver import NatsServer
from tests.conftest import ROOT, StackFactory, eventually

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "events.md"


def example_namespace(doc: Path = DOC) -> dict[str, Any]:
    text = doc.read_text()
    marker = text.index("<!-- example: follow")
    code = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert code is not None, "the example's code block is missing"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), f"{doc}:example", "exec"), namespace)
    return namespace


class Collector:
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    async def __call__(self, seq: int, subject: str, data: bytes) -> None:
        self.seen.append((seq, subject))

    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.seen]


async def stored_seqs(keel: Any, run_id: str) -> list[int]:
    # One sequence per stored event: the timeline lists a start that carries its first step twice.
    return list(dict.fromkeys(entry.seq for entry in await keel.timeline(run_id)))


async def test_the_documented_example_survives_a_server_restart(
    keel_stack: StackFactory, nats_server: NatsServer
) -> None:
    follow_workflow = example_namespace()["follow_workflow"]
    stack = await keel_stack()
    async with await stack.client() as keel:
        first = await keel.trigger("demo", {}, "doc-1", wait=True)
    assert first.status == "done", stack.logs()

    collected = Collector()
    task = asyncio.create_task(follow_workflow(nats_server.url, "demo", collected))
    try:
        async with await stack.client() as keel:
            before = await stored_seqs(keel, first.run_id)
        await eventually(lambda: collected.seqs() == before, timeout=30)

        # The server goes away and comes back (same store, same port); the services reconnect.
        await asyncio.to_thread(nats_server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.start)

        async with await stack.client() as keel:
            second = await keel.trigger("demo", {}, "doc-2", wait=True, timeout=60)
            assert second.status == "done", stack.logs()
            after = await stored_seqs(keel, second.run_id)
        await eventually(lambda: collected.seqs() == before + after, timeout=60)
        await asyncio.sleep(1.0)  # nothing more arrives: no duplicate was on its way
        assert collected.seqs() == before + after
        assert all(subject.startswith("keel.run.demo.") for _, subject in collected.seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # Resuming after the last event of the first run yields exactly the second run's events.
    resumed = Collector()
    task = asyncio.create_task(follow_workflow(nats_server.url, "demo", resumed, after=before[-1]))
    try:
        await eventually(lambda: len(resumed.seen) >= len(after), timeout=30)
        await asyncio.sleep(0.5)
        assert resumed.seqs() == after
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
