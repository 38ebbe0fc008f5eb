"""A router append that is stored but whose acknowledgement is lost (a leader failover) must not leave the
run without what it needs to move on: the retry is refused by the sequence check, the re-read finds our
own events with nothing left to decide, and the effects (here, a retry's timer) are published all the
same. (An attempt's own work needs no effect: its stored `step_scheduled` is what executors consume.)"""

from collections.abc import Sequence
from datetime import UTC, datetime

from router_testkit import failed

from keel_contracts import topology
from keel_contracts.codec import encode
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.runs import RunView
from keel_contracts.timers import TimerFired
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import RunRepository
from keel_router.workflow.loader import load_workflow_text
from keel_shared.eventstore import ConcurrencyConflict, StoredEvent
from keel_shared.keyrings import Keyring
from keel_shared.triggers import build_trigger
from tests.conftest import TEST_SCHEDULE_SIGNER

WORKFLOW = load_workflow_text(
    """
name: lossy
steps:
  - id: one
    kind: tool
    tool: demo.echo
    retry:
      - {error_equals: [transient], interval_seconds: 5}
  - {id: two, kind: tool, tool: demo.echo}
""",
    "lossy.yaml",
)


class LossyStore:
    """Keeps events like KEEL_EVENTS does; can lose the acknowledgement of the next append."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.lose_next_ack = False

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> list[StoredEvent]:
        return [e for e in self.events if e.seq > after_seq]

    async def append(self, messages: Sequence[Message], expected_last_seq: int) -> int:
        last = self.events[-1].seq if self.events else 0
        if expected_last_seq != last:
            raise ConcurrencyConflict(f"wrong last sequence: {last}")
        for message in messages:
            self.events.append(StoredEvent(len(self.events) + 1, topology.subject_of(message), encode(message)))
        if self.lose_next_ack:
            # Stored, but the publisher never heard: its retry with the same id meets the sequence check.
            self.lose_next_ack = False
            raise ConcurrencyConflict(f"wrong last sequence: {self.events[-1].seq}")
        return self.events[-1].seq


async def test_effects_are_published_when_our_own_append_was_stored_but_its_ack_was_lost() -> None:
    store = LossyStore()
    published: list[Effect] = []
    views: list[RunView] = []

    async def publish(effect: Effect) -> None:
        published.append(effect)

    async def put_view(view: RunView, urgent: bool) -> None:
        views.append(view)

    router = Router(
        WorkflowCatalog.of({"lossy": WORKFLOW}),
        RunRepository(store, Keyring("keel-approval-decisions")),  # type: ignore[arg-type]
        Engine(lambda: datetime(2026, 1, 1, tzinfo=UTC)),
        publish,
        put_view,
        schedule_signer=TEST_SCHEDULE_SIGNER,
    )
    state = await router.on_trigger(build_trigger("lossy", {}, "k-1"), redelivered=False)
    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "one"
    assert published == []  # the stored step_scheduled is the executor's work
    outcome = failed(state, ErrorClass.TRANSIENT)
    store.events.append(StoredEvent(3, topology.subject_of(outcome), encode(outcome)))

    store.lose_next_ack = True
    state = await router.on_run_changed("lossy", state.run_id, redelivered=False)

    assert state is not None and state.pending_retry is not None
    assert len(store.events) == 4  # run_started, step_scheduled, step_failed, retry_scheduled: stored once
    timers = [e.message for e in published if isinstance(e.message, TimerFired)]
    assert [(t.step_id, t.body.next_attempt) for t in timers] == [("one", 2)]
    assert views and views[-1].last_seq == 4
