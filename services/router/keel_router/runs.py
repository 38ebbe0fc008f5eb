"""Loading runs from the event stream and storing their transitions, one writer at a time per run.

A run's state is cached after it is folded; before every decision the events stored since the cached
sequence are read and folded in, so the cache can be stale but never wrong. One read is skipped when
nothing can have been stored between the cached state and the event that woke the router: the event
sits at the very next stream sequence, or the server stored it under a sequence check that names the
run and the cached sequence (an executor appends an outcome expecting its `step_scheduled` to be the
run's last event, decision 023). Such an event is folded in as delivered, so a run stepping on its own
costs no read however many other runs interleave. Appends carry the run's last sequence: if anyone
wrote in between, the append is refused, the run re-read and the decision made again.

Only what its rightful emitter stored is folded (decision 026): an event under another emitter's subject,
or an approval decision whose signature does not verify against the approval keyring, is skipped like an
unreadable one (counted and logged) and can never move the run.
"""

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation
from keel_contracts.envelope import Message
from keel_contracts.events import RunEvent
from keel_router.aggregate import RunState, apply
from keel_shared.eventstore import BatchAlreadyStored, ConcurrencyConflict, EventStore
from keel_shared.keyrings import Verifier
from keel_shared.logging import get_logger
from keel_shared.trust import check_decision, read_event

log = get_logger(__name__)

MAX_CONFLICT_RETRIES = 20


class Delivered(NamedTuple):
    """An event a consumer was handed: its stream sequence, the event, and the run sequence the server
    checked was the run's last before storing it (`Nats-Expected-Last-Subject-Sequence` on the run's
    filter), if its writer asked for that check."""

    seq: int | None
    event: Message
    follows: int | None = None


def checked_follows(headers: Mapping[str, str] | None, workflow: str, run_id: str) -> int | None:
    """The run sequence a stored event was checked to follow directly, from the headers it was stored
    with. Only a check on this run's whole filter counts: anything narrower leaves room for other events."""
    if not headers or headers.get("Nats-Expected-Last-Subject-Sequence-Subject") != s.run_filter(workflow, run_id):
        return None
    value = headers.get("Nats-Expected-Last-Subject-Sequence", "")
    return int(value) if value.isdigit() else None


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
    def __init__(self, store: EventStore, keyring: Verifier, cache_size: int = 10_000) -> None:
        self._store = store
        self._keyring = keyring
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, asyncio.Lock] = {}
        # The last sequence stored under a run that has no state yet, when it is not 0: what its first
        # append is checked against.
        self._unstarted: dict[str, int] = {}

    def lock(self, run_id: str) -> asyncio.Lock:
        """Serialises this process's decisions on one run (other processes are held off by the
        sequence check)."""
        lock = self._locks.get(run_id)
        if lock is None:
            if len(self._locks) > self._cache_size:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    async def load(self, workflow: str, run_id: str, delivered: Delivered | None = None) -> RunState | None:
        cached = self._cache.get(run_id)
        if (
            cached is not None
            and delivered is not None
            and delivered.seq is not None
            and (delivered.seq == cached.last_seq + 1 or delivered.follows == cached.last_seq)
        ):
            folded = apply(cached, delivered.seq, delivered.event)
            if folded is not None:
                self._remember(folded)
            return folded
        after = cached.last_seq if cached else 0
        state = cached
        last = after
        for stored in await self._store.read(s.run_filter(workflow, run_id), after_seq=after):
            last = stored.seq
            try:
                event = self.believed(stored.subject, stored.data)
            except ContractViolation as exc:
                # Stored events are immutable: one this version cannot read is skipped, not fatal. Its
                # sequence still counts: the run's next append is checked against the last one stored.
                log.warning("unreadable_event", seq=stored.seq, subject=stored.subject, reason=exc.reason)
                state = None if state is None else replace(state, last_seq=stored.seq)
                continue
            state = apply(state, stored.seq, event)
        if state is not None:
            self._remember(state)
            self._unstarted.pop(run_id, None)
        elif last:
            # Events stored before the run started (anyone can name a run: its id follows from the intent).
            if len(self._unstarted) > self._cache_size:
                self._unstarted.clear()
            self._unstarted[run_id] = last
        return state

    def believed(self, subject: str, data: bytes) -> RunEvent:
        """A stored event of a run, if it may move the run: from its rightful emitter and, for a decision,
        signed by a key the approval keyring trusts (`ContractViolation` otherwise)."""
        event = read_event(s.ROUTER, subject, data)
        check_decision(s.ROUTER, self._keyring, subject, event)
        return event

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
        delivered: Delivered | None = None,
        probably_new: bool = False,
        trust_cache: bool = False,
    ) -> Transaction:
        """Decide on the current state and store the decision (see `Transaction`). `delivered` is the
        event (and its stream sequence) that asked for the decision, if one did.

        `probably_new` (a trigger) skips the first read of a run this process knows nothing about and
        decides as if it had no events: the append then carries "no events yet" as its sequence check,
        so a run that does exist refuses it, and the loop reads the run and decides again.

        `trust_cache` decides first on the cached state without reading what was stored since: for a
        caller that has just stored a transition of this run itself. Stale or not, the append's sequence
        check decides; a refusal re-reads as usual.
        """
        conflicted = False
        guess = probably_new and run_id not in self._cache and run_id not in self._unstarted
        for _ in range(MAX_CONFLICT_RETRIES):
            if guess:
                state = None
                try:
                    events = list(decide(state))
                except Exception:
                    # Refused as a new run (a limit, say): the refusal must be about the run as stored.
                    events = []
                guess = False
                if not events:
                    continue
            else:
                if trust_cache and not conflicted and run_id in self._cache:
                    state = self._cache[run_id]
                else:
                    state = await self.load(workflow, run_id, None if conflicted else delivered)
                events = list(decide(state))
                if not events:
                    return Transaction(state, state, conflicted)
            try:
                last_seq = await self._store.append(events, state.last_seq if state else self._unstarted.get(run_id, 0))
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
