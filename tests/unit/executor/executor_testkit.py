"""Fakes shared by the executor tests (a plain module: a conftest name would clash across test dirs).

In-memory claims and outcome store with the semantics of the KV bucket and the event stream, and tools
that record how they were called.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import JsonValue

from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_executor.claims import Claim, ClaimState
from keel_executor.execution import outcome_key
from keel_executor.tools.registry import ToolContext

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class MemoryClaims:
    """Create-only claims: the first claim wins (NEW); any later claim takes it over (TAKEN_OVER) and
    learns who held it before."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    async def claim(self, dedupe_key: str, holder: str) -> Claim:
        entry = self.entries.get(dedupe_key)
        if entry is None:
            self.entries[dedupe_key] = {"state": "running", "holder": holder, "revision": 1}
            return Claim(dedupe_key, ClaimState.NEW, 1)
        previous = entry["holder"]
        entry.update(holder=holder, revision=entry["revision"] + 1)
        return Claim(dedupe_key, ClaimState.TAKEN_OVER, entry["revision"], previous)

    def state_of(self, dedupe_key: str) -> str | None:
        entry = self.entries.get(dedupe_key)
        return None if entry is None else entry["state"]


class MemoryOutcomes:
    """The run's event stream as far as the executor sees it: appends deduplicated by dedupe key, the
    sequence check an outcome may ask for, and cancellations stored after a sequence."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self._seq_of: dict[str, int] = {}
        self.next_seq = 41
        #: For each recorded outcome, the sequence the "follows directly" check passed for (else None).
        self.checked_follows: dict[str, int | None] = {}
        self.cancelled_at: int | None = None

    async def find(self, cmd: ExecuteStep) -> int | None:
        return self._seq_of.get(outcome_key(cmd))

    async def record(self, event: Message, follows_seq: int | None = None) -> int:
        if event.dedupe_key in self._seq_of:
            return self._seq_of[event.dedupe_key]
        # Every event of this fake belongs to one run, so the run's last sequence is the stream's.
        self.checked_follows[event.dedupe_key] = follows_seq if follows_seq == self.next_seq else None
        self.next_seq += 1
        self.events.append(event)
        self._seq_of[event.dedupe_key] = self.next_seq
        return self.next_seq

    def cancel(self) -> int:
        """Store the run's cancellation; returns its sequence."""
        self.next_seq += 1
        self.cancelled_at = self.next_seq
        return self.next_seq

    async def cancelled(self, cmd: ExecuteStep, after_seq: int) -> bool:
        return self.cancelled_at is not None and self.cancelled_at > after_seq


class ToolCalls:
    def __init__(self) -> None:
        self.calls: list[tuple[ToolContext, dict[str, JsonValue]]] = []

    def tool(self, result: Callable[[ToolContext, dict[str, JsonValue]], Any]) -> Any:
        async def run(ctx: ToolContext, data: dict[str, JsonValue]) -> Any:
            self.calls.append((ctx, data))
            return result(ctx, data)

        return run

    @property
    def keys(self) -> list[str]:
        return [ctx.idempotency_key for ctx, _ in self.calls]
