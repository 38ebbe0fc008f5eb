"""Keeping the KEEL_RUNS view current without a bucket write on every step.

A view is written at once when a run appears or its status changes: that is what `keel runs`, `keel
run cancel` and dashboards wait for, and a parked or finished run will not move again to correct a
missed write. Progress within one status (the current step, attempts so far) is coalesced: the latest
view of each run is written shortly after, and a run that changes status meanwhile drops its pending
progress. A router that dies with progress pending leaves a view one status-change behind at worst,
which the run's next transition overwrites; the events stay the truth either way.
"""

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from keel_contracts.runs import RunView
from keel_shared.logging import get_logger

log = get_logger(__name__)

Put = Callable[[RunView], Awaitable[None]]


class ViewWriter:
    def __init__(self, put: Put, delay: float = 1.0, remember: int = 100_000) -> None:
        self._put = put
        self._delay = delay
        self._pending: dict[str, RunView] = {}
        # Per run: the newest view handed to the bucket (by the run's last sequence), and the write in
        # flight. Writes of one run are chained in the order they start and an older view than one
        # already started is dropped, so an older view never lands last.
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._remember = remember
        self._writing: dict[str, asyncio.Task[None]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, view: RunView, status_changed: bool) -> None:
        if not status_changed:
            self._pending[view.run_id] = view
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_later())
            return
        self._pending.pop(view.run_id, None)
        await self._write_now(view)

    async def _write_now(self, view: RunView) -> None:
        run_id = view.run_id
        if view.last_seq < self._newest.get(run_id, -1):
            return
        self._newest[run_id] = view.last_seq
        self._newest.move_to_end(run_id)
        while len(self._newest) > self._remember:
            self._newest.popitem(last=False)
        task = asyncio.ensure_future(self._after(self._writing.get(run_id), view))
        self._writing[run_id] = task
        try:
            await task
        finally:
            if self._writing.get(run_id) is task:
                del self._writing[run_id]

    async def _after(self, previous: asyncio.Task[None] | None, view: RunView) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        await self._put(view)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._delay)
        await self.flush()

    async def flush(self) -> None:
        """Write every pending view now (also what a stopping router does)."""
        batch, self._pending = self._pending, {}
        results = await asyncio.gather(*(self._write_now(v) for v in batch.values()), return_exceptions=True)
        failed = [(v, r) for v, r in zip(batch.values(), results, strict=True) if isinstance(r, BaseException)]
        for view, _ in failed:
            # Keep it for the next flush unless a newer view has replaced it meanwhile.
            self._pending.setdefault(view.run_id, view)
        if failed:
            # One line per flush, not per run: during an outage every pending run fails every second.
            log.warning("view_writes_failed", runs=len(failed), error=str(failed[0][1]), retry_in=self._delay)
        if self._pending and (self._flusher is None or self._flusher.done() or self._flusher is asyncio.current_task()):
            self._flusher = asyncio.create_task(self._flush_later())
