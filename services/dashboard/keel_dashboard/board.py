"""The run board: every run's latest view (from the KEEL_RUNS bucket), filtered and counted.

Pure domain logic: the KV watch feeds it (`apply`/`remove`), the web layer reads snapshots, and the
metrics collector reads per-state counts. The metrics thread reads while the event loop writes, so the
map is guarded by a plain lock; change notification for the event loop uses an `asyncio.Event`.
"""

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keel_contracts.runs import RunStatus, RunView
from keel_contracts.subjects import TOKEN_RE


class FilterError(ValueError):
    """A filter parameter that cannot be understood (the web layer answers 400)."""


def _parse_time(value: str | None, what: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{what} must be an ISO 8601 time with a UTC offset, got {value!r}") from None
    if parsed.tzinfo is None:
        raise FilterError(f"{what} must carry a UTC offset (e.g. 2026-01-01T10:00:00Z), got {value!r}")
    return parsed


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list. Empty fields match everything; times bound the run's start."""

    states: frozenset[RunStatus] = frozenset()
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(
        cls, state: str | None = None, workflow: str | None = None, since: str | None = None, until: str | None = None
    ) -> "RunFilter":
        states: set[RunStatus] = set()
        for name in (state or "").split(","):
            if not name.strip():
                continue
            try:
                states.add(RunStatus(name.strip()))
            except ValueError:
                known = ", ".join(s.value for s in RunStatus)
                raise FilterError(f"unknown state {name.strip()!r} (one of: {known})") from None
        if workflow and not TOKEN_RE.fullmatch(workflow):
            raise FilterError(f"not a workflow name: {workflow!r}")
        return cls(frozenset(states), workflow or None, _parse_time(since, "since"), _parse_time(until, "until"))

    def without_states(self) -> "RunFilter":
        return RunFilter(frozenset(), self.workflow, self.since, self.until)

    def matches(self, view: RunView) -> bool:
        if self.states and view.status not in self.states:
            return False
        if self.workflow is not None and view.workflow != self.workflow:
            return False
        if self.since is not None and view.started_at < self.since:
            return False
        return not (self.until is not None and view.started_at > self.until)


def run_row(view: RunView) -> dict[str, Any]:
    """One run as the board lists it: the view without its output (which may be large)."""
    row = view.model_dump(mode="json", exclude={"output"})
    row["terminal"] = view.status.terminal
    row["parked"] = view.status.parked
    return row


class RunBoard:
    def __init__(self) -> None:
        self._runs: dict[str, RunView] = {}
        self._lock = threading.Lock()
        self._changed = asyncio.Event()
        self.version = 0
        #: True once the watch delivered every view that existed when it started.
        self.ready = False

    # --- writes (event loop) ---------------------------------------------------------------------
    def apply(self, view: RunView) -> bool:
        """Store a newer view of a run; an older one (a replayed watch) is ignored. True if it changed."""
        with self._lock:
            current = self._runs.get(view.run_id)
            if current is not None and current.last_seq > view.last_seq:
                return False
            self._runs[view.run_id] = view
        self._bump()
        return True

    def remove(self, run_id: str) -> None:
        with self._lock:
            removed = self._runs.pop(run_id, None)
        if removed is not None:
            self._bump()

    def mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, seen_version: int, timeout: float) -> bool:
        """Wait until the board differs from `seen_version`; False on timeout."""
        if self.version != seen_version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- reads (any thread) ----------------------------------------------------------------------
    def views(self) -> list[RunView]:
        with self._lock:
            return list(self._runs.values())

    def get(self, run_id: str) -> RunView | None:
        with self._lock:
            return self._runs.get(run_id)

    def snapshot(self, flt: RunFilter, limit: int) -> dict[str, Any]:
        """Counts by state (for the filter without its states, so every state's count stays visible),
        and the newest-updated `limit` runs that match the whole filter."""
        views = self.views()
        around = flt.without_states()
        counts = Counter(v.status.value for v in views if around.matches(v))
        matching = sorted((v for v in views if flt.matches(v)), key=lambda v: v.updated_at, reverse=True)
        return {
            "version": self.version,
            "ready": self.ready,
            "counts": {state.value: counts.get(state.value, 0) for state in RunStatus},
            "total": len(matching),
            "workflows": sorted({v.workflow for v in views}),
            "runs": [run_row(v) for v in matching[:limit]],
        }

    def state_counts(self) -> dict[tuple[str, str], int]:
        """Runs per (workflow, state), every state present for each known workflow (0 included)."""
        views = self.views()
        counts: dict[tuple[str, str], int] = {}
        for workflow in {v.workflow for v in views}:
            for state in RunStatus:
                counts[(workflow, state.value)] = 0
        for v in views:
            counts[(v.workflow, v.status.value)] += 1
        return counts

    def oldest_unfinished(self) -> dict[tuple[str, str], datetime]:
        """For each (workflow, non-final state), when the least recently changed run in it last changed."""
        oldest: dict[tuple[str, str], datetime] = {}
        for v in self.views():
            if v.status.terminal:
                continue
            key = (v.workflow, v.status.value)
            if key not in oldest or v.updated_at < oldest[key]:
                oldest[key] = v.updated_at
        return oldest
