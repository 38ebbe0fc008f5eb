"""The run aggregate: state is the fold of the run's events, and folding is total and idempotent."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from pydantic import JsonValue
from router_testkit import T0, failed, succeeded, workflow

from keel_contracts.codec import ContractViolation, decode_event, encode
from keel_contracts.commands import execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RetryScheduledBody,
    RunCompleted,
    RunCompletedBody,
    RunFailed,
    RunFailedBody,
    RunStarted,
    RunStartedBody,
    StepFailed,
    StepFailedBody,
    StepScheduled,
    StepScheduledBody,
    StepSucceeded,
    StepSucceededBody,
    TriggerJoined,
    TriggerJoinedBody,
)
from keel_contracts.runs import RunStatus, RunView
from keel_contracts.timers import TimerBody, TimerFired
from keel_router.aggregate import RunState, apply, fold
from keel_router.engine import command_id

RUN = "r-test"
WF = "orders"


def env(minutes: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": RUN,
        "workflow": WF,
        "correlation_id": "corr-1",
        "actor": "router",
        "dedupe_key": f"k-{minutes}-{sorted(extra.items())}",
        "occurred_at": T0 + timedelta(minutes=minutes),
        **extra,
    }


def started(trigger_id: str = "t-1", input: dict[str, JsonValue] | None = None) -> RunStarted:
    return RunStarted(
        **env(0),
        body=RunStartedBody(intent_key="order-1", source="test", trigger_id=trigger_id, input=input or {"n": 1}),
    )


def scheduled(step: str, attempt: int = 1, minutes: int = 1, visit: int = 1) -> StepScheduled:
    return StepScheduled(
        **env(minutes, step_id=step, attempt=attempt),
        body=StepScheduledBody(
            tool=f"tools.{step}",
            input={"step": step},
            idempotency_key=f"idem-{step}-{visit}",
            command_id=command_id(RUN, step, visit, attempt),
            timeout_seconds=5,
            reason=f"schedule {step}",
        ),
    )


def caused_by(step: str, attempt: int, visit: int = 1) -> str:
    """Outcomes name their attempt by causation: the id of the attempt's execute command."""
    return execute_message_id(command_id(RUN, step, visit, attempt))


def ok(step: str, output: dict[str, JsonValue], attempt: int = 1, minutes: int = 2, visit: int = 1) -> StepSucceeded:
    return StepSucceeded(
        **env(minutes, step_id=step, attempt=attempt, causation_id=caused_by(step, attempt, visit)),
        body=StepSucceededBody(
            tool=f"tools.{step}", output=output, started_at=T0, finished_at=T0, executor_id="executor-1"
        ),
    )


def bad(step: str, error_class: ErrorClass, attempt: int = 1, minutes: int = 2, visit: int = 1) -> StepFailed:
    return StepFailed(
        **env(minutes, step_id=step, attempt=attempt, causation_id=caused_by(step, attempt, visit)),
        body=StepFailedBody(
            tool=f"tools.{step}",
            error_class=error_class,
            error_type="Boom",
            message=f"{step} failed",
            started_at=T0,
            finished_at=T0,
            executor_id="executor-1",
        ),
    )


def retry(step: str, next_attempt: int, retrier_index: int = 0, minutes: int = 3) -> RetryScheduled:
    return RetryScheduled(
        **env(minutes, step_id=step, attempt=next_attempt - 1),
        body=RetryScheduledBody(
            next_attempt=next_attempt,
            retrier_index=retrier_index,
            error_class=ErrorClass.TRANSIENT,
            delay_seconds=4,
            due_at=T0 + timedelta(seconds=4),
            reason=f"retry {step}",
        ),
    )


def numbered(*events: Message) -> list[tuple[int, Message]]:
    return list(enumerate(events, start=1))


def folded(*events: Message) -> RunState:
    state = fold(numbered(*events))
    assert state is not None
    return state


def test_fold_of_a_full_three_step_run_is_done_with_every_result():
    state = folded(
        started(),
        scheduled("a", minutes=1),
        ok("a", {"x": 1}, minutes=2),
        scheduled("b", minutes=3),
        ok("b", {"y": 2}, minutes=4),
        scheduled("c", minutes=5),
        ok("c", {"z": 3}, minutes=6),
        RunCompleted(**env(7), body=RunCompletedBody(output={"z": 3}, reason="c succeeded; end of the workflow")),
    )

    assert state.status is RunStatus.DONE
    assert state.terminal
    assert state.results == {"a": {"x": 1}, "b": {"y": 2}, "c": {"z": 3}}
    assert state.output == {"z": 3}
    assert [(a.step_id, a.attempt, a.outcome) for a in state.attempts] == [
        ("a", 1, "succeeded"),
        ("b", 1, "succeeded"),
        ("c", 1, "succeeded"),
    ]
    assert state.in_flight is None
    assert state.last_seq == 8
    assert state.updated_at == T0 + timedelta(minutes=7)
    assert state.data_writes == (("steps.a", {"x": 1}), ("steps.b", {"y": 2}), ("steps.c", {"z": 3}))


def test_a_run_whose_first_event_is_not_run_started_cannot_be_folded():
    assert fold([]) is None
    assert fold(numbered(scheduled("a"), ok("a", {}))) is None


def test_a_duplicate_step_succeeded_for_the_same_attempt_is_ignored():
    state = folded(started(), scheduled("a"), ok("a", {"x": 1}))

    again = apply(state, state.last_seq + 1, ok("a", {"x": "different"}, minutes=9))

    assert again is not None
    assert again.results == {"a": {"x": 1}}
    assert again.attempts[0].output == {"x": 1}
    assert again.data_writes == state.data_writes


def test_a_failure_reported_after_the_success_of_the_same_attempt_is_ignored():
    state = folded(started(), scheduled("a"), ok("a", {"x": 1}), bad("a", ErrorClass.TRANSIENT))

    assert state.attempts[0].outcome == "succeeded"
    assert state.attempts[0].error_class is None


@pytest.mark.parametrize(
    "outcome",
    [ok("a", {"x": 1}, attempt=2), bad("a", ErrorClass.PERMANENT, attempt=2), ok("ghost", {"x": 1})],
    ids=["success-of-unscheduled-attempt", "failure-of-unscheduled-attempt", "success-of-unknown-step"],
)
def test_an_outcome_for_an_attempt_never_scheduled_is_ignored(outcome: Message):
    state = folded(started(), scheduled("a"))

    after = apply(state, state.last_seq + 1, outcome)

    assert after is not None
    assert after.results == {}
    assert after.attempts == state.attempts
    assert after.in_flight == state.in_flight
    assert after.status is RunStatus.RUNNING


def test_events_at_or_below_the_last_sequence_are_ignored():
    state = folded(started(), scheduled("a"))

    assert apply(state, state.last_seq, ok("a", {"x": 1})) is state
    assert apply(state, 1, ok("a", {"x": 1})) is state
    # The same event at a new sequence does apply: sequence, not content, orders the fold.
    applied = apply(state, state.last_seq + 1, ok("a", {"x": 1}))
    assert applied is not None
    assert applied.results == {"a": {"x": 1}}


def test_a_repeated_step_scheduled_keeps_the_first_attempt():
    state = folded(started(), scheduled("a"), scheduled("a", minutes=5))

    assert len(state.attempts) == 1
    assert state.attempts[0].command_id == command_id(RUN, "a", 1, 1)


def test_trigger_joined_adds_a_trigger_once():
    join = TriggerJoined(**env(1), body=TriggerJoinedBody(intent_key="order-1", source="test", trigger_id="t-2"))

    state = folded(started("t-1"), join, join)

    assert state.triggers == {"t-1", "t-2"}
    assert state.view().triggers == 2


def test_retry_scheduled_sets_retrying_and_the_next_step_scheduled_clears_it_recording_the_retrier():
    state = folded(started(), scheduled("a"), bad("a", ErrorClass.TRANSIENT), retry("a", 2, retrier_index=1))

    assert state.status is RunStatus.RETRYING
    assert state.reason == "retry a"
    assert state.pending_retry is not None
    assert (state.pending_retry.step_id, state.pending_retry.next_attempt) == ("a", 2)
    assert state.pending_retry.retrier_index == 1
    assert state.pending_retry.due_at == T0 + timedelta(seconds=4)
    assert state.in_flight is None

    after = apply(state, state.last_seq + 1, scheduled("a", attempt=2, minutes=4))

    assert after is not None
    assert after.status is RunStatus.RUNNING
    assert after.pending_retry is None
    assert after.in_flight is not None
    assert (after.in_flight.attempt, after.in_flight.retrier_index) == (2, 1)
    assert after.attempts[0].retrier_index is None


def test_a_step_scheduled_that_is_not_the_pending_retry_records_no_retrier():
    state = folded(started(), scheduled("a"), bad("a", ErrorClass.TRANSIENT), retry("a", 2, retrier_index=1))

    after = apply(state, state.last_seq + 1, scheduled("b"))

    assert after is not None
    b = after.attempt("b", 1)
    assert b is not None
    assert b.retrier_index is None


def test_route_decided_writes_the_error_then_the_fallback_result_into_run_data_in_order(engine, run_log, make_trigger):
    wf = workflow(
        """
        name: fallback
        steps:
          - id: lookup
            kind: tool
            tool: crm.lookup
          - id: charge
            kind: tool
            tool: billing.charge
            catch:
              - error_equals: [all]
                next: manual
                fallback_result:
                  status: manual
                  account: "${steps.lookup.account}"
          - id: done
            kind: succeed
          - id: manual
            kind: tool
            tool: ops.manual
            input:
              status: "${steps.charge.status}"
              why: "${errors.charge.message}"
        """
    )
    run_log.append(engine.on_trigger(None, make_trigger("fallback"), wf))
    run_log.append([succeeded(run_log.run, {"account": "acc-1"})])
    run_log.append(engine.advance(run_log.run, wf, None))
    run_log.append([failed(run_log.run, ErrorClass.BUSINESS_RULE, "account locked")])

    run_log.append(engine.advance(run_log.run, wf, None))

    state = run_log.run
    paths = [path for path, _ in state.data_writes]
    assert paths == ["steps.lookup", "errors.charge", "steps.charge"]
    writes = dict(state.data_writes)
    assert isinstance(writes["errors.charge"], dict)
    assert "account locked" in writes["errors.charge"].values()
    assert writes["steps.charge"] == {"status": "manual", "account": "acc-1"}
    assert state.routes[-1].kind == "catch"
    assert state.routes[-1].to_step == "manual"
    assert state.routes[-1].writes == tuple(state.data_writes[1:])
    # The fallback step read both writes.
    assert state.in_flight is not None
    assert state.in_flight.input == {"status": "manual", "why": "account locked"}
    # Replaying the stored events rebuilds the same run data.
    assert fold(run_log.events) == state


def test_an_event_type_the_aggregate_does_not_handle_is_ignored():
    state = folded(started(), scheduled("a"))
    stranger = TimerFired(
        **env(3, step_id="a", attempt=2),
        body=TimerBody(purpose="retry", due_at=T0, next_attempt=2),
    )

    after = apply(state, state.last_seq + 1, stranger)

    assert after is not None
    assert after.last_seq == state.last_seq + 1
    assert (after.status, after.attempts, after.results) == (state.status, state.attempts, state.results)


def test_run_failed_records_the_error_class_and_reason():
    state = folded(
        started(),
        scheduled("a"),
        bad("a", ErrorClass.AUTH),
        RunFailed(**env(3), body=RunFailedBody(reason="a failed with auth", error_class=ErrorClass.AUTH)),
    )

    assert state.status is RunStatus.FAILED
    assert state.error_class is ErrorClass.AUTH
    assert state.reason == "a failed with auth"
    assert state.view().error_class == "auth"


def test_view_reports_the_run_as_operators_see_it():
    state = folded(
        started("t-1"),
        TriggerJoined(**env(1), body=TriggerJoinedBody(intent_key="order-1", source="test", trigger_id="t-2")),
        scheduled("a", minutes=2),
        ok("a", {"x": 1}, minutes=3),
        scheduled("b", minutes=4),
    )

    view = state.view()

    assert isinstance(view, RunView)
    assert view.run_id == RUN
    assert view.workflow == WF
    assert view.tenant == "default"
    assert view.intent_key == "order-1"
    assert view.status is RunStatus.RUNNING
    assert view.reason == "schedule b"
    assert view.current_step == "b"
    assert view.started_at == T0
    assert view.updated_at == T0 + timedelta(minutes=4)
    assert view.last_seq == 5
    assert view.steps_done == 1
    assert view.attempts == 2
    assert view.triggers == 2
    assert view.output is None
    assert view.error_class is None


def test_view_of_a_finished_run_has_no_current_step_and_its_output():
    state = folded(
        started(),
        scheduled("a"),
        ok("a", {"x": 1}),
        RunCompleted(**env(3), body=RunCompletedBody(output={"x": 1}, reason="done")),
    )

    view = state.view()

    assert view.status is RunStatus.DONE
    assert view.current_step is None
    assert view.output == {"x": 1}


def test_a_stored_event_whose_timestamp_has_no_offset_is_refused_by_the_codec_or_folds():
    state = folded(started())
    joined = TriggerJoined(**env(1), body=TriggerJoinedBody(intent_key="order-1", source="test", trigger_id="t-2"))
    doc = json.loads(encode(joined))
    doc["occurred_at"] = "2025-03-01T12:01:00"  # written by a client that forgot the offset

    try:
        event = decode_event(json.dumps(doc).encode())
    except ContractViolation as exc:
        assert exc.reason == "invalid"
        return
    after = apply(state, state.last_seq + 1, event)
    assert after is not None
    assert after.triggers == {"t-1", "t-2"}


# --- a start that carries its first step (decision 025) ---------------------------------------------------
def started_with(step: StepScheduled) -> RunStarted:
    return started().with_first_step(step)


def test_a_start_that_carries_its_first_step_folds_to_the_same_run_as_the_two_events_stored_apart():
    together = apply(None, 7, started_with(scheduled("a")))
    apart = fold([(7, started()), (8, scheduled("a"))])

    assert together is not None and apart is not None
    assert together.in_flight is not None and together.in_flight.step_id == "a"
    assert together.last_seq == 7  # both facts are the one stored event's
    assert replace_seq(together) == replace_seq(apart)


def test_the_outcome_of_a_first_step_carried_by_the_start_is_folded_onto_its_attempt():
    state = fold([(1, started_with(scheduled("a"))), (2, ok("a", {"x": 1}))])

    assert state is not None and state.results == {"a": {"x": 1}} and state.in_flight is None


def test_a_start_carrying_its_first_step_survives_encoding_at_version_2():
    first = scheduled("a")
    event = started_with(first)
    decoded = decode_event(encode(event))

    assert isinstance(decoded, RunStarted) and decoded.version == 2
    assert decoded.body.first_step == first
    # A version above the reader's is refused, not misread: that is how a reader of version 1 (which would
    # drop the step) treats this event.
    doc = json.loads(encode(event))
    doc["version"] = 3
    with pytest.raises(ContractViolation):
        decode_event(json.dumps(doc).encode())


def replace_seq(state: RunState) -> RunState:
    from dataclasses import replace

    return replace(state, last_seq=0, updated_at=T0)
