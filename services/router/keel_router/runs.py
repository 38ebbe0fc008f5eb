"""Loading runs from the event stream and storing their transitions, one writer at a time per run.

A run's state is cached after it is folded; before every decision the events stored since the cached
sequence are read and folded in, so the cache can be stale but never wrong. Appends carry the run's
last sequence: if anyone wrote in between, the append is refused, the run re-read and the decision
made again.
"""

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, decode_event
from keel_contracts.envelope import Message
from keel_router.aggregate import RunState, apply
from keel_shared.eventstore import BatchAlreadyStored, ConcurrencyConflict, EventStore
from keel_shared.logging import get_logger

log = get_logger(__name__)

MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True)
class Transaction:
    """What one `transact` did. `before` is the state decided on; `after` the state once the decision
    was stored (the same object when there was nothing to decide).

    `conflicted` says an append was refused on the way. That includes the case where our own append
    was stored but its acknowledgement was lost (a leader failover) and the retry was refused by the
    sequence check: the re-read then finds our events and there is "nothing to decide", yet nobody has
    published their effects. Callers must publish effects whenever `conflicted` is set.
    """

    before: RunState | None
    after: RunState | None
    conflicted: bool

    @property
    def appended(self) -> bool:
        return self.after is not self.before


class RunRepository:
    def __init__(self, store: EventStore, cache_size: int = 10_000) -> None:
        self._store = store
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, run_id: str) -> asyncio.Lock:
        """Serialises this process's decisions on one run (other processes are held off by the
        sequence check)."""
        lock = self._locks.get(run_id)
        if lock is None:
            if len(self._locks) > self._cache_size:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    def forget(self, run_id: str) -> None:
        self._cache.pop(run_id, None)

    async def load(self, workflow: str, run_id: str) -> RunState | None:
        cached = self._cache.get(run_id)
        after = cached.last_seq if cached else 0
        state = cached
        for stored in await self._store.read(s.run_filter(workflow, run_id), after_seq=after):
            try:
                event = decode_event(stored.data)
            except ContractViolation as exc:
                # Stored events are immutable: one this version cannot read is skipped, not fatal.
                log.warning("unreadable_event", seq=stored.seq, subject=stored.subject, reason=exc.reason)
                continue
            state = apply(state, stored.seq, event)
        if state is not None:
            self._remember(state)
        return state

    def _remember(self, state: RunState) -> None:
        self._cache[state.run_id] = state
        self._cache.move_to_end(state.run_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def transact(
        self,
        workflow: str,
        run_id: str,
        decide: Callable[[RunState | None], Sequence[Message]],
    ) -> Transaction:
        """Decide on the current state and store the decision (see `Transaction`)."""
        conflicted = False
        for _ in range(MAX_CONFLICT_RETRIES):
            state = await self.load(workflow, run_id)
            events = list(decide(state))
            if not events:
                return Transaction(state, state, conflicted)
            try:
                last_seq = await self._store.append(events, state.last_seq if state else 0)
            except (ConcurrencyConflict, BatchAlreadyStored) as exc:
                log.info("append_conflict", run_id=run_id, detail=str(exc))
                conflicted = True
                continue
            first_seq = last_seq - len(events) + 1  # a batch is stored contiguously
            after = state
            for offset, event in enumerate(events):
                after = apply(after, first_seq + offset, event)
            assert after is not None
            self._remember(after)
            return Transaction(state, after, conflicted)
        raise ConcurrencyConflict(f"run {run_id}: still conflicting after {MAX_CONFLICT_RETRIES} attempts")
