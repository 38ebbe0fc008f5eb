"""`keel run timeline` and `keel watch` list the facts a stored event holds: a run's start that carries
its first step (decision 025) is two entries with one sequence."""

from keel_cli.client import _entries
from keel_cli.render import timeline_line
from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_contracts.events import RunStarted, RunStartedBody, StepScheduled, StepScheduledBody

ENV = {"run_id": "r1", "workflow": "demo", "correlation_id": "c1", "actor": "router"}


def step() -> StepScheduled:
    body = StepScheduledBody(
        tool="demo.echo", input={"x": 1}, idempotency_key="k", command_id="r1:a:1:1", timeout_seconds=5, reason="go"
    )
    return StepScheduled(**ENV, step_id="a", attempt=1, dedupe_key="r1:a:1:1:scheduled", body=body)


def start(first: StepScheduled | None) -> RunStarted:
    body = RunStartedBody(intent_key="i", source="cli", trigger_id="t1", input={}, first_step=first)
    return RunStarted(**ENV, dedupe_key="r1:started", body=body)


def test_a_start_carrying_its_first_step_is_listed_as_the_start_then_the_step_at_the_same_sequence() -> None:
    first = step()
    subject = s.event_subject("demo", "r1", s.ROUTER, "run_started")

    started, scheduled = _entries(9, subject, encode(start(first)))

    assert (started.seq, started.type) == (9, "run_started")
    assert (scheduled.seq, scheduled.type, scheduled.emitter) == (9, "step_scheduled", "router")
    assert scheduled.subject == s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")
    assert scheduled.event == first and scheduled.to_json()["event"]["body"]["command_id"] == "r1:a:1:1"


def test_a_plain_start_and_an_unreadable_event_are_one_entry_each() -> None:
    subject = s.event_subject("demo", "r1", s.ROUTER, "run_started")

    assert [e.type for e in _entries(3, subject, encode(start(None)))] == ["run_started"]
    (unreadable,) = _entries(4, subject, b"not json")
    assert unreadable.event is None and unreadable.raw == b"not json"


def test_an_event_under_another_emitters_token_is_listed_as_rejected_and_not_read() -> None:
    # A start stored under the executor's token: whoever wrote it, it is not the router's.
    forged = s.event_subject("demo", "r1", s.EXECUTOR, "run_started")

    (entry,) = _entries(5, forged, encode(start(None)))

    assert entry.event is None and entry.rejected is not None and "router only" in entry.rejected
    assert entry.to_json()["rejected"] == entry.rejected
    assert "REJECTED" in timeline_line(entry)
