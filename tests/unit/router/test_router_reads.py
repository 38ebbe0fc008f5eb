"""When the router may skip reading a run before deciding, and that skipping never decides wrongly."""

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from keel_contracts import topology
from keel_contracts.attempts import execute_step_for
from keel_contracts.codec import decode_event, encode
from keel_contracts.envelope import Message
from keel_contracts.events import RunStarted, StepSucceeded, StepSucceededBody, scheduled_step
from keel_contracts.runs import RunStatus, RunView
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import Delivered, RunRepository, checked_follows
from keel_router.workflow.loader import load_workflow_text
from keel_router.workflow.models import Workflow
from keel_shared import keyrings, schedules
from keel_shared.eventstore import ConcurrencyConflict, StoredEvent
from keel_shared.keyrings import Keyring
from keel_shared.triggers import build_trigger
from tests.conftest import TEST_SCHEDULE_SIGNER

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORKFLOW = load_workflow_text(
    """
name: two
steps:
  - {id: one, kind: tool, tool: demo.echo}
  - {id: two, kind: tool, tool: demo.echo}
""",
    "two.yaml",
)

WAITS_FIRST = load_workflow_text(
    """
name: waits
steps:
  - {id: hold, kind: wait, seconds: 30}
  - {id: one, kind: tool, tool: demo.echo}
""",
    "waits.yaml",
)


class CountingStore:
    """One stream (sequences shared by every run, as in KEEL_EVENTS) that counts reads."""

    def __init__(self) -> None:
        self.events: list[tuple[str, StoredEvent]] = []
        self.reads = 0

    def last_of(self, run_id: str) -> int:
        return max((e.seq for r, e in self.events if r == run_id), default=0)

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> list[StoredEvent]:
        self.reads += 1
        run_id = subject_filter.split(".")[3]
        return [e for r, e in self.events if r == run_id and e.seq > after_seq]

    def store(self, message: Message) -> int:
        seq = len(self.events) + 1
        self.events.append((message.run_id, StoredEvent(seq, topology.subject_of(message), encode(message))))
        return seq

    async def append(self, messages: Sequence[Message], expected_last_seq: int) -> int:
        if expected_last_seq != self.last_of(messages[0].run_id):
            raise ConcurrencyConflict("wrong last sequence")
        return [self.store(m) for m in messages][-1]


def outcome_of(store: CountingStore) -> StepSucceeded:
    """The outcome of the attempt most recently scheduled in the store, as an executor reports it."""
    scheduled = [step for _, stored in store.events if (step := scheduled_step(decode_event(stored.data)))]
    cmd = execute_step_for(scheduled[-1])
    return StepSucceeded(
        run_id=cmd.run_id,
        workflow=cmd.workflow,
        step_id=cmd.step_id,
        attempt=cmd.attempt,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.id,
        actor="executor:ex-1",
        dedupe_key=f"{cmd.dedupe_key}:outcome",
        body=StepSucceededBody(tool="demo.echo", output={}, started_at=T0, finished_at=T0, executor_id="ex-1"),
    )


def scheduled_seq(store: CountingStore) -> int:
    return max(e.seq for _, e in store.events if scheduled_step(decode_event(e.data)))


def make_router(store: CountingStore, workflow: Workflow = WORKFLOW) -> tuple[Router, list[Effect]]:
    published: list[Effect] = []

    async def publish(effect: Effect) -> None:
        published.append(effect)

    async def put_view(view: RunView, urgent: bool) -> None:
        return None

    router = Router(
        WorkflowCatalog.of({workflow.name: workflow}),
        RunRepository(store, Keyring("keel-approval-decisions")),  # type: ignore[arg-type]
        Engine(lambda: T0),
        publish,
        put_view,
        schedule_signer=TEST_SCHEDULE_SIGNER,
    )
    return router, published


async def test_a_trigger_for_a_run_nobody_has_seen_starts_it_without_a_read() -> None:
    store = CountingStore()
    router, _ = make_router(store)

    state = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)

    assert state is not None and state.status is RunStatus.RUNNING
    assert store.reads == 0


async def test_a_trigger_for_a_run_that_exists_elsewhere_joins_it_after_the_refused_guess() -> None:
    store = CountingStore()
    elsewhere, _ = make_router(store)
    await elsewhere.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)
    router, _ = make_router(store)  # another process: an empty cache

    state = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)

    assert state is not None and len(state.triggers) == 2
    assert [decode_event(e.data).type for _, e in store.events].count("run_started") == 1


async def test_an_outcome_at_the_next_sequence_is_folded_in_as_delivered() -> None:
    store = CountingStore()
    router, _ = make_router(store)
    started = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)
    assert started is not None
    outcome = outcome_of(store)
    seq = store.store(outcome)

    state = await router.on_run_changed("two", started.run_id, False, delivered=Delivered(seq, outcome))

    assert store.reads == 0
    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "two"


async def test_an_outcome_after_a_gap_is_decided_on_a_fresh_read() -> None:
    store = CountingStore()
    router, _ = make_router(store)
    started = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)
    assert started is not None
    outcome = outcome_of(store)
    store.store(outcome.model_copy(update={"run_id": "someone-else"}))  # another run's event
    seq = store.store(outcome)

    state = await router.on_run_changed("two", started.run_id, False, delivered=Delivered(seq, outcome))

    assert store.reads == 1
    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "two"


async def test_an_outcome_after_a_gap_that_the_server_checked_follows_the_run_is_folded_in_without_a_read() -> None:
    store = CountingStore()
    router, _ = make_router(store)
    started = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)
    assert started is not None
    outcome = outcome_of(store)
    store.store(outcome.model_copy(update={"run_id": "someone-else"}))  # other runs interleave
    seq = store.store(outcome)

    delivered = Delivered(seq, outcome, follows=scheduled_seq(store))
    state = await router.on_run_changed("two", started.run_id, False, delivered=delivered)

    assert store.reads == 0
    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "two"


async def test_an_outcome_checked_against_an_older_sequence_than_the_cached_one_is_read_first() -> None:
    store = CountingStore()
    router, _ = make_router(store)
    started = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)
    assert started is not None
    outcome = outcome_of(store)
    store.store(outcome.model_copy(update={"run_id": "someone-else"}))
    seq = store.store(outcome)

    delivered = Delivered(seq, outcome, follows=scheduled_seq(store) - 1)
    await router.on_run_changed("two", started.run_id, False, delivered=delivered)

    assert store.reads == 1


def test_only_a_check_on_the_whole_run_says_what_an_event_follows() -> None:
    run_wide = {
        "Nats-Expected-Last-Subject-Sequence": "17",
        "Nats-Expected-Last-Subject-Sequence-Subject": "keel.run.two.r1.>",
    }
    assert checked_follows(run_wide, "two", "r1") == 17
    assert checked_follows(run_wide, "two", "r2") is None  # another run's check
    narrower = {**run_wide, "Nats-Expected-Last-Subject-Sequence-Subject": "keel.run.two.r1.executor.*"}
    assert checked_follows(narrower, "two", "r1") is None
    assert checked_follows({"Nats-Expected-Last-Subject-Sequence": "17"}, "two", "r1") is None  # no subject
    assert checked_follows({**run_wide, "Nats-Expected-Last-Subject-Sequence": "x"}, "two", "r1") is None
    assert checked_follows(None, "two", "r1") is None


class AppendLog(CountingStore):
    """Also remembers how many events each append stored, and can stop after a number of appends."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.stop_after = stop_after

    async def append(self, messages: Sequence[Message], expected_last_seq: int) -> int:
        if self.stop_after is not None and len(self.sizes) >= self.stop_after:
            raise RuntimeError("the process stopped here")
        seq = await super().append(messages, expected_last_seq)
        self.sizes.append(len(messages))
        return seq


async def test_a_new_run_whose_first_step_is_a_tool_step_starts_with_one_append_that_carries_it() -> None:
    store = AppendLog()
    router, _ = make_router(store)  # type: ignore[arg-type]

    state = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)

    assert store.sizes == [1]  # one write: run_started with the first attempt (decision 025)
    (stored,) = [decode_event(e.data) for _, e in store.events]
    assert isinstance(stored, RunStarted) and stored.body.first_step is not None
    assert stored.body.first_step.step_id == "one" and stored.body.first_step.attempt == 1
    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "one"
    assert state.last_seq == store.events[0][1].seq
    assert store.reads == 0


async def test_a_new_run_whose_first_step_is_not_a_tool_step_stores_the_start_then_what_follows() -> None:
    store = AppendLog()
    router, _ = make_router(store, WAITS_FIRST)  # type: ignore[arg-type]

    state = await router.on_trigger(build_trigger("waits", {}, "k-1"), redelivered=False)

    assert store.sizes == [1, 1]  # two single appends, not an atomic batch (decision 024)
    assert [decode_event(e.data).type for _, e in store.events] == ["run_started", "wait_started"]
    assert state is not None and state.status is RunStatus.WAITING
    assert store.reads == 0


async def test_a_redelivered_trigger_moves_on_a_run_whose_start_was_stored_alone() -> None:
    store = AppendLog(stop_after=1)  # the process stops after storing run_started
    first, _ = make_router(store, WAITS_FIRST)  # type: ignore[arg-type]
    trigger = build_trigger("waits", {}, "k-1")
    with pytest.raises(RuntimeError):
        await first.on_trigger(trigger, redelivered=False)
    store.stop_after = None
    again, _ = make_router(store, WAITS_FIRST)  # type: ignore[arg-type]  # another process gets the trigger again

    state = await again.on_trigger(trigger, redelivered=True)

    assert [decode_event(e.data).type for _, e in store.events] == ["run_started", "wait_started"]
    assert state is not None and state.status is RunStatus.WAITING
    assert len(state.triggers) == 1  # the same trigger, not a join


async def test_a_second_trigger_for_a_run_under_way_joins_it_and_schedules_nothing_more() -> None:
    store = AppendLog()
    router, _ = make_router(store)  # type: ignore[arg-type]
    await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)

    state = await router.on_trigger(build_trigger("two", {}, "k-1"), redelivered=False)

    assert [decode_event(e.data).type for _, e in store.events] == ["run_started", "trigger_joined"]
    assert state is not None and len(state.triggers) == 2


WRITES = load_workflow_text(
    """
name: writes
steps:
  - {id: note, kind: tool, tool: demo.ledger, side_effect: write, input: {account: a, amount: 1}}
  - {id: look, kind: tool, tool: demo.echo}
""",
    "writes.yaml",
)


async def test_every_write_the_router_schedules_is_signed_and_reads_are_not() -> None:
    store = CountingStore()
    router, _ = make_router(store, WRITES)
    trusted = keyrings.trusting(schedules.PURPOSE, TEST_SCHEDULE_SIGNER)

    state = await router.on_trigger(build_trigger("writes", {}, "k-1"), redelivered=False)
    assert state is not None
    await router.on_run_changed("writes", state.run_id, redelivered=False, delivered=None)
    store.store(outcome_of(store))
    await router.on_run_changed("writes", state.run_id, redelivered=False)

    steps = [step for _, stored in store.events if (step := scheduled_step(decode_event(stored.data)))]
    write, read = steps
    assert write.body.side_effect == "write" and schedules.schedule_problem(trusted, write) is None
    assert read.body.side_effect == "read" and read.body.signature is None
