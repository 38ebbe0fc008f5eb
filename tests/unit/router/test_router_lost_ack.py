"""A router append that is stored but whose acknowledgement is lost (a leader failover) must not leave the
run without its command: the retry is refused by the sequence check, the re-read finds our own events
with nothing left to decide, and the effects are published all the same."""

from collections.abc import Sequence
from datetime import UTC, datetime

from keel_contracts.codec import encode
from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_contracts.runs import RunView
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import RunRepository
from keel_router.workflow.loader import load_workflow_text
from keel_shared.eventstore import ConcurrencyConflict, StoredEvent
from keel_shared.triggers import build_trigger

WORKFLOW = load_workflow_text(
    """
name: lossy
steps:
  - {id: one, kind: tool, tool: demo.echo}
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
            self.events.append(StoredEvent(len(self.events) + 1, f"keel.run.x.{message.type}", encode(message)))
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
        RunRepository(store),  # type: ignore[arg-type]
        Engine(lambda: datetime(2026, 1, 1, tzinfo=UTC)),
        publish,
        put_view,
    )
    store.lose_next_ack = True
    state = await router.on_trigger(build_trigger("lossy", {}, "k-1"), redelivered=False)

    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "one"
    assert len(store.events) == 2  # run_started + step_scheduled, stored once
    commands = [e.message for e in published if isinstance(e.message, ExecuteStep)]
    assert [c.step_id for c in commands] == ["one"]
    assert views and views[-1].current_step == "one"
