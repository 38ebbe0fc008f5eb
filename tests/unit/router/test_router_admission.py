"""Runs in flight (KEEL_MAX_RUNS_IN_FLIGHT): the count a router process keeps from run_started and final
events, and the router refusing a trigger that would start a run beyond it, never one that joins a run."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from nats.js.errors import BadRequestError
from router_testkit import succeeded

from keel_contracts import topology
from keel_contracts.codec import ContractViolation, decode_event, encode
from keel_contracts.envelope import Message
from keel_contracts.events import RunStarted, StepScheduled
from keel_contracts.runs import RunView
from keel_router.admission import RESERVATION_SECONDS, NotReady, RunsInFlight, TooManyRuns
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import RunRepository
from keel_router.workflow.loader import load_workflow_text
from keel_shared.eventstore import ConcurrencyConflict, StoredEvent
from keel_shared.keyrings import Keyring
from keel_shared.triggers import build_trigger
from tests.conftest import TEST_SCHEDULE_SIGNER

PARK = load_workflow_text(
    """
name: park
steps:
  - {id: ask, kind: human, queue: ops, prompt: "go?", input_schema: {type: object}}
""",
    "park.yaml",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ready(limit: int, clock: Clock | None = None) -> RunsInFlight:
    runs = RunsInFlight(limit, clock or Clock())
    runs.caught_up()
    return runs


# --- the count --------------------------------------------------------------------------------------


def test_a_tenant_may_start_runs_up_to_the_limit_and_the_next_is_refused_with_the_count_and_the_limit() -> None:
    runs = ready(2)
    runs.admit("acme", "r1")
    runs.admit("acme", "r2")

    with pytest.raises(TooManyRuns) as refused:
        runs.admit("acme", "r3")

    assert refused.value.reason == "too_many_runs"
    assert "tenant 'acme' has 2 runs in flight" in refused.value.detail
    assert "the limit is 2 (KEEL_MAX_RUNS_IN_FLIGHT)" in refused.value.detail
    runs.admit("globex", "r4")  # another tenant has its own count
    assert (runs.count("acme"), runs.count("globex")) == (2, 1)


def test_runs_seen_in_the_stream_count_and_a_final_event_frees_their_place() -> None:
    runs = ready(2)
    runs.observe("run_started", "acme", "r1")
    runs.observe("run_started", "acme", "r2")
    with pytest.raises(TooManyRuns):
        runs.admit("acme", "r3")

    runs.observe("run_cancelled", "acme", "r1")
    runs.admit("acme", "r3")
    assert runs.count("acme") == 2


@pytest.mark.parametrize("final", ["run_completed", "run_failed", "run_cancelled"])
def test_every_final_event_ends_the_count_of_its_run(final: str) -> None:
    runs = ready(5)
    runs.observe("run_started", "acme", "r1")
    runs.observe(final, "acme", "r1")
    assert runs.count("acme") == 0


def test_an_admitted_run_is_counted_once_when_its_run_started_arrives() -> None:
    runs = ready(5)
    runs.admit("acme", "r1")
    runs.admit("acme", "r1")  # the same decision taken again after a conflict
    runs.observe("run_started", "acme", "r1")
    assert runs.count("acme") == 1


def test_a_run_that_ended_before_its_admission_was_counted_is_not_counted() -> None:
    runs = ready(5)
    # Another router started and finished it while this one was deciding on the same run.
    runs.observe("run_started", "acme", "r1")
    runs.observe("run_completed", "acme", "r1")
    runs.admit("acme", "r1")
    assert runs.count("acme") == 0


def test_a_withdrawn_admission_frees_its_place_and_a_forgotten_one_lapses() -> None:
    clock = Clock()
    runs = ready(1, clock)
    runs.admit("acme", "r1")
    runs.withdraw("acme", "r1")  # the handler failed: no run was started
    runs.admit("acme", "r2")
    with pytest.raises(TooManyRuns):
        runs.admit("acme", "r3")

    clock.now += RESERVATION_SECONDS + 1  # r2's run_started never showed up
    runs.admit("acme", "r3")


def test_nothing_is_admitted_or_refused_before_the_stream_has_been_read_unless_there_is_no_limit() -> None:
    runs = RunsInFlight(1)
    with pytest.raises(NotReady):
        runs.admit("acme", "r1")
    runs.caught_up()
    runs.admit("acme", "r1")

    unlimited = RunsInFlight(0)
    for n in range(5):
        unlimited.admit("acme", f"r{n}")


# --- the router ------------------------------------------------------------------------------------


class MemoryStore:
    """Keeps every run's events like KEEL_EVENTS; refuses a message over `max_bytes` like the stream does."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.events: dict[str, list[StoredEvent]] = {}
        self.seq = 0
        self.max_bytes = max_bytes

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> list[StoredEvent]:
        run_id = subject_filter.split(".")[3]
        return [e for e in self.events.get(run_id, []) if e.seq > after_seq]

    async def append(self, messages: Sequence[Message], expected_last_seq: int) -> int:
        run = self.events.setdefault(messages[0].run_id, [])
        if (run[-1].seq if run else 0) != expected_last_seq:
            raise ConcurrencyConflict("wrong last sequence")
        if any(len(encode(m)) > self.max_bytes for m in messages):
            raise BadRequestError(code=400, err_code=10054, description="message size exceeds maximum allowed")
        for message in messages:
            self.seq += 1
            run.append(StoredEvent(self.seq, topology.subject_of(message), encode(message)))
        return self.seq

    def types(self, run_id: str) -> list[str]:
        return [e.subject.rsplit(".", 1)[1] for e in self.events.get(run_id, [])]


def router_with(runs: RunsInFlight | None, store: MemoryStore, catalog: dict | None = None) -> Router:
    async def publish(effect: Effect) -> None:
        return None

    async def put_view(view: RunView, urgent: bool) -> None:
        return None

    return Router(
        WorkflowCatalog.of(catalog or {"park": PARK}),
        RunRepository(store, Keyring("keel-approval-decisions")),  # type: ignore[arg-type]
        Engine(lambda: datetime(2026, 1, 1, tzinfo=UTC)),
        publish,
        put_view,
        runs_in_flight=runs,
        max_message_bytes=store.max_bytes,
        schedule_signer=TEST_SCHEDULE_SIGNER,
    )


async def test_a_trigger_beyond_the_limit_is_refused_and_starts_nothing_but_joining_a_run_never_is() -> None:
    store = MemoryStore()
    router = router_with(ready(2), store)
    first = await router.on_trigger(build_trigger("park", {}, "one"), redelivered=False)
    await router.on_trigger(build_trigger("park", {}, "two"), redelivered=False)

    third = build_trigger("park", {}, "three")
    with pytest.raises(ContractViolation) as refused:
        await router.on_trigger(third, redelivered=False)
    assert refused.value.reason == "too_many_runs"
    assert third.run_id not in store.events

    joined = await router.on_trigger(build_trigger("park", {}, "one"), redelivered=False)
    assert first is not None and joined is not None and joined.run_id == first.run_id
    assert store.types(first.run_id).count("trigger_joined") == 1


async def test_a_trigger_that_arrives_before_the_count_is_read_waits_for_it() -> None:
    runs = RunsInFlight(5)
    router = router_with(runs, MemoryStore())
    pending = asyncio.ensure_future(router.on_trigger(build_trigger("park", {}, "early"), redelivered=False))
    await asyncio.sleep(0.05)
    assert not pending.done()

    runs.caught_up()
    state = await asyncio.wait_for(pending, 5)
    assert state is not None and runs.count("default") == 1


async def test_a_refused_or_failed_start_leaves_no_place_taken() -> None:
    runs = ready(1)
    store = MemoryStore(max_bytes=2048)
    router = router_with(runs, store)
    with pytest.raises(ContractViolation) as refused:
        await router.on_trigger(build_trigger("park", {"note": "x" * 4000}, "big"), redelivered=False)
    assert refused.value.reason == "too_large"
    assert runs.count("default") == 0
    assert await router.on_trigger(build_trigger("park", {}, "small"), redelivered=False) is not None


async def test_an_event_the_stream_refuses_as_too_large_blocks_the_run_with_the_reason() -> None:
    echo = load_workflow_text(
        """
name: echo
steps:
  - {id: get, kind: tool, tool: demo.echo}
  - {id: copy, kind: tool, tool: demo.echo, input: {text: "${steps.get.text}${steps.get.text}"}}
""",
        "echo.yaml",
    )
    store = MemoryStore(max_bytes=3000)
    router = router_with(None, store, {"echo": echo})
    started = await router.on_trigger(build_trigger("echo", {}, "k"), redelivered=False)
    assert started is not None and started.in_flight is not None
    outcome = succeeded(started, {"text": "y" * 1400})  # fits; the next step's input, twice that, does not
    await store.append([outcome], started.last_seq)

    state = await router.on_run_changed("echo", started.run_id, redelivered=False)

    assert state is not None and str(state.status) == "blocked"
    assert state.reason.startswith("limit max_message_bytes exceeded: step_scheduled of step copy is ")
    assert "the event stream refused it (KEEL_MAX_MESSAGE_BYTES is 3000); not storing it" in state.reason
    assert store.types(started.run_id)[-1] == "run_blocked"


async def test_a_start_that_does_not_fit_with_its_first_step_is_stored_alone_and_the_step_after_it() -> None:
    doubles = load_workflow_text(
        """
name: doubles
steps:
  - {id: copy, kind: tool, tool: demo.echo, input: {text: "${input.note}${input.note}"}}
""",
        "doubles.yaml",
    )
    store = MemoryStore(max_bytes=3000)
    router = router_with(None, store, {"doubles": doubles})

    # run_started (~1.5 kB) and the step (~2.5 kB) each fit; one event carrying both does not.
    state = await router.on_trigger(build_trigger("doubles", {"note": "n" * 900}, "k"), redelivered=False)

    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "copy"
    assert store.types(state.run_id) == ["run_started", "step_scheduled"]
    (started, scheduled) = (decode_event(e.data) for e in store.events[state.run_id])
    assert isinstance(started, RunStarted) and started.body.first_step is None
    assert isinstance(scheduled, StepScheduled) and scheduled.body.input == {"text": "n" * 1800}
