"""The engine's decisions: a pure function of a run's state and its workflow."""

from __future__ import annotations

import random
from datetime import timedelta

from router_testkit import T0, RunLog, failed, succeeded, workflow

from keel_contracts import timers
from keel_contracts.attempts import execute_step_for
from keel_contracts.commands import TriggerRun, execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RouteDecided,
    RunCompleted,
    RunFailed,
    RunFailedBody,
    RunStarted,
    StepScheduled,
    TriggerJoined,
)
from keel_contracts.runs import RunStatus
from keel_contracts.timers import TimerBody, TimerFired
from keel_router.engine import Engine, command_id
from keel_router.workflow import Workflow

THREE_STEPS = workflow(
    """
    name: orders
    steps:
      - id: lookup
        kind: tool
        tool: crm.lookup
        input:
          customer: "${input.customer}"
          note: "order ${input.order_id}"
      - id: charge
        kind: tool
        tool: billing.charge
        side_effect: write
        timeout_seconds: 12
        input:
          account: "${steps.lookup.account}"
          amount: "${input.amount}"
      - id: notify
        kind: tool
        tool: mail.send
        input:
          to: "${steps.lookup.email}"
          receipt: "${steps.charge.receipt_id}"
    """
)
ORDER = {"customer": "ada", "order_id": 42, "amount": 1250}

RETRYING = workflow(
    """
    name: retrying
    steps:
      - id: charge
        kind: tool
        tool: billing.charge
        input:
          amount: "${input.amount}"
        retry:
          - error_equals: [transient]
            interval_seconds: 2
            backoff_rate: 3
            max_delay_seconds: 10
            max_attempts: 3
            jitter: none
        catch:
          - error_equals: [all]
            next: open_ticket
      - id: finished
        kind: succeed
      - id: open_ticket
        kind: tool
        tool: ops.ticket
        input:
          why: "${errors.charge.message}"
    """
)

NO_CATCH = workflow(
    """
    name: nocatch
    steps:
      - id: charge
        kind: tool
        tool: billing.charge
        retry:
          - error_equals: [transient]
            interval_seconds: 1
            max_attempts: 1
    """
)


def start(engine: Engine, log: RunLog, wf: Workflow, trigger: TriggerRun) -> list[Message]:
    return log.append(engine.on_trigger(None, trigger, wf))


def fail_and_advance(
    engine: Engine, log: RunLog, wf: Workflow, error_class: ErrorClass, message: str = "boom"
) -> list[Message]:
    log.append([failed(log.run, error_class, message)])
    return log.append(engine.advance(log.run, wf, None))


def fire_pending_timer(engine: Engine, log: RunLog, wf: Workflow) -> list[Message]:
    (effect,) = [e for e in engine.effects(log.run) if isinstance(e.message, TimerFired)]
    assert isinstance(effect.message, TimerFired)
    return log.append(engine.on_timer(log.run, effect.message, wf))


# --- triggers ----------------------------------------------------------------------------------------


def test_trigger_on_a_new_run_starts_it_and_schedules_the_first_step_with_rendered_input(engine, run_log, make_trigger):
    trigger = make_trigger("orders", ORDER)
    out = start(engine, run_log, THREE_STEPS, trigger)

    assert [type(e) for e in out] == [RunStarted, StepScheduled]
    started, scheduled = out
    assert started.run_id == trigger.run_id
    assert started.body.trigger_id == trigger.id
    assert started.body.input == ORDER
    assert started.body.intent_key == "order-1"
    assert scheduled.step_id == "lookup"
    assert scheduled.attempt == 1
    assert scheduled.causation_id == trigger.id
    # A whole-string reference keeps its JSON type; embedded references are stringified.
    assert scheduled.body.input == {"customer": "ada", "note": "order 42"}
    assert scheduled.body.tool == "crm.lookup"
    assert scheduled.body.command_id == command_id(trigger.run_id, "lookup", 1, 1)
    assert scheduled.body.idempotency_key == f"keel-{trigger.run_id}-lookup-1"
    assert run_log.run.status is RunStatus.RUNNING
    assert run_log.run.in_flight is not None and run_log.run.in_flight.step_id == "lookup"


def test_a_second_trigger_for_the_same_intent_joins_the_existing_run(engine, run_log, make_trigger):
    first = make_trigger("orders", ORDER)
    start(engine, run_log, THREE_STEPS, first)
    second = make_trigger("orders", {"customer": "someone else"})
    assert second.run_id == first.run_id

    out = run_log.append(engine.on_trigger(run_log.run, second, THREE_STEPS))

    assert len(out) == 1
    (joined,) = out
    assert isinstance(joined, TriggerJoined)
    assert joined.body.trigger_id == second.id
    assert joined.causation_id == second.id
    assert run_log.run.triggers == {first.id, second.id}
    # Joining does not touch the work in flight or the run's input.
    assert run_log.run.input == ORDER
    assert len(run_log.run.attempts) == 1


def test_the_same_trigger_delivered_again_decides_nothing(engine, run_log, make_trigger):
    first = make_trigger("orders", ORDER)
    start(engine, run_log, THREE_STEPS, first)
    second = make_trigger("orders", ORDER)
    run_log.append(engine.on_trigger(run_log.run, second, THREE_STEPS))

    assert engine.on_trigger(run_log.run, first, THREE_STEPS) == []
    assert engine.on_trigger(run_log.run, second, THREE_STEPS) == []


# --- advancing ---------------------------------------------------------------------------------------


def test_advance_after_each_success_feeds_earlier_outputs_into_the_next_step_and_completes_the_run(
    engine, run_log, make_trigger
):
    trigger = make_trigger("orders", ORDER)
    start(engine, run_log, THREE_STEPS, trigger)

    # Nothing to decide while an attempt is in flight.
    assert engine.advance(run_log.run, THREE_STEPS, None) == []

    run_log.append([succeeded(run_log.run, {"account": "acc-7", "email": "ada@example.com"})])
    (charge,) = run_log.append(engine.advance(run_log.run, THREE_STEPS, "cause-1"))
    assert isinstance(charge, StepScheduled)
    assert charge.step_id == "charge"
    assert charge.causation_id == "cause-1"
    assert charge.body.input == {"account": "acc-7", "amount": 1250}
    assert charge.body.side_effect == "write"
    assert charge.body.timeout_seconds == 12
    assert charge.body.reason == "after lookup succeeded"

    run_log.append([succeeded(run_log.run, {"receipt_id": "rc-1"})])
    (notify,) = run_log.append(engine.advance(run_log.run, THREE_STEPS, None))
    assert isinstance(notify, StepScheduled)
    assert notify.step_id == "notify"
    assert notify.body.input == {"to": "ada@example.com", "receipt": "rc-1"}

    run_log.append([succeeded(run_log.run, {"sent": True, "id": "m-9"})])
    (completed,) = run_log.append(engine.advance(run_log.run, THREE_STEPS, None))
    assert isinstance(completed, RunCompleted)
    assert completed.body.output == {"sent": True, "id": "m-9"}
    assert run_log.run.status is RunStatus.DONE

    # A finished run decides nothing more; a later trigger for the intent only joins it.
    assert engine.advance(run_log.run, THREE_STEPS, None) == []
    assert [type(e) for e in engine.on_trigger(run_log.run, make_trigger("orders"), THREE_STEPS)] == [TriggerJoined]


def test_a_missing_template_reference_fails_the_run_naming_the_missing_path(engine, run_log, make_trigger):
    out = start(engine, run_log, THREE_STEPS, make_trigger("orders", {"order_id": 1}))

    assert [type(e) for e in out] == [RunStarted, RunFailed]
    fail = out[1]
    assert "input.customer" in fail.body.reason
    assert fail.body.failed_step == "lookup"
    assert run_log.run.status is RunStatus.FAILED
    assert run_log.run.attempts == ()


# --- retries, catchers -------------------------------------------------------------------------------


def test_failed_attempt_with_a_matching_retrier_schedules_a_retry_with_step_functions_backoff(
    engine, run_log, make_trigger
):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    delays = []
    for attempt in (1, 2, 3):
        (retry,) = fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)
        assert isinstance(retry, RetryScheduled)
        assert retry.step_id == "charge"
        assert retry.attempt == attempt
        assert retry.body.next_attempt == attempt + 1
        assert retry.body.retrier_index == 0
        assert retry.body.error_class is ErrorClass.TRANSIENT
        assert retry.body.due_at == T0 + timedelta(seconds=retry.body.delay_seconds)
        assert run_log.run.status is RunStatus.RETRYING
        delays.append(retry.body.delay_seconds)
        fire_pending_timer(engine, run_log, RETRYING)
    # interval * rate^n: 2, 6, then 18 capped by max_delay_seconds at 10; no jitter.
    assert delays == [2.0, 6.0, 10.0]


def test_retries_exhausted_route_to_the_catcher_with_the_error_stored_for_the_fallback(engine, run_log, make_trigger):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    for _ in range(3):
        fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)
        fire_pending_timer(engine, run_log, RETRYING)

    out = fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT, "gateway timeout")

    assert [type(e) for e in out] == [RouteDecided, StepScheduled]
    route, fallback = out
    assert route.body.kind == "catch"
    assert route.body.to_step == "open_ticket"
    assert route.step_id == "charge"
    assert fallback.step_id == "open_ticket"
    assert fallback.attempt == 1
    assert fallback.body.input == {"why": "gateway timeout"}
    error_doc = dict(run_log.run.data_writes)["errors.charge"]
    assert isinstance(error_doc, dict)
    assert "gateway timeout" in error_doc.values()
    assert "transient" in error_doc.values()
    assert run_log.run.status is RunStatus.RUNNING


def test_an_error_no_retrier_matches_goes_straight_to_the_catcher(engine, run_log, make_trigger):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))

    out = fail_and_advance(engine, run_log, RETRYING, ErrorClass.AUTH, "token expired")

    assert [type(e) for e in out] == [RouteDecided, StepScheduled]
    assert out[1].body.input == {"why": "token expired"}


def test_without_a_catcher_a_failure_fails_the_run_with_its_error_class(engine, run_log, make_trigger):
    start(engine, run_log, NO_CATCH, make_trigger("nocatch"))

    (fail,) = fail_and_advance(engine, run_log, NO_CATCH, ErrorClass.PERMANENT, "card declined")

    assert isinstance(fail, RunFailed)
    assert fail.body.error_class is ErrorClass.PERMANENT
    assert fail.body.failed_step == "charge"
    assert "card declined" in fail.body.reason
    assert run_log.run.status is RunStatus.FAILED
    assert run_log.run.error_class is ErrorClass.PERMANENT


def test_without_a_catcher_exhausted_retries_fail_the_run_saying_how_many_attempts_ran(engine, run_log, make_trigger):
    start(engine, run_log, NO_CATCH, make_trigger("nocatch"))
    fail_and_advance(engine, run_log, NO_CATCH, ErrorClass.TRANSIENT)
    fire_pending_timer(engine, run_log, NO_CATCH)

    (fail,) = fail_and_advance(engine, run_log, NO_CATCH, ErrorClass.TRANSIENT, "still down")

    assert isinstance(fail, RunFailed)
    assert fail.body.error_class is ErrorClass.TRANSIENT
    assert "after 2 attempts" in fail.body.reason


def test_each_retrier_counts_its_own_retries(engine, run_log, make_trigger):
    wf = workflow(
        """
        name: tworetriers
        steps:
          - id: call
            kind: tool
            tool: api.call
            retry:
              - error_equals: [timeout]
                interval_seconds: 100
                max_attempts: 1
              - error_equals: [transient]
                interval_seconds: 1
                backoff_rate: 2
                max_attempts: 5
        """
    )
    start(engine, run_log, wf, make_trigger("tworetriers"))
    seen = []
    for error_class in (ErrorClass.TRANSIENT, ErrorClass.TIMEOUT, ErrorClass.TRANSIENT):
        (retry,) = fail_and_advance(engine, run_log, wf, error_class)
        seen.append((retry.body.retrier_index, retry.body.delay_seconds))
        fire_pending_timer(engine, run_log, wf)
    assert seen == [(1, 1.0), (0, 100.0), (1, 2.0)]
    # The timeout retrier is exhausted now: another timeout ends the run.
    (fail,) = fail_and_advance(engine, run_log, wf, ErrorClass.TIMEOUT)
    assert isinstance(fail, RunFailed)


def test_full_jitter_draws_the_delay_from_the_seeded_rng_within_the_backoff(make_trigger):
    wf = workflow(
        """
        name: jittery
        steps:
          - id: call
            kind: tool
            tool: api.call
            retry:
              - error_equals: [transient]
                interval_seconds: 8
                jitter: full
        """
    )
    delays = []
    for _ in range(2):
        log = RunLog()
        eng = Engine(lambda: T0, random.Random(7))
        start(eng, log, wf, make_trigger("jittery"))
        (retry,) = fail_and_advance(eng, log, wf, ErrorClass.TRANSIENT)
        delays.append(retry.body.delay_seconds)
    assert delays[0] == delays[1]
    assert 0 <= delays[0] <= 8
    assert delays[0] == random.Random(7).uniform(0.0, 8.0)


# --- timers ------------------------------------------------------------------------------------------


def test_the_retry_timer_schedules_the_next_attempt_with_the_same_idempotency_key_and_input(
    engine, run_log, make_trigger
):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    first = run_log.run.in_flight
    assert first is not None
    fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)

    out = fire_pending_timer(engine, run_log, RETRYING)

    assert len(out) == 1
    (retry,) = out
    assert isinstance(retry, StepScheduled)
    assert retry.attempt == 2
    assert retry.body.idempotency_key == first.idempotency_key
    assert retry.body.input == first.input == {"amount": 5}
    assert retry.body.command_id == command_id(run_log.run.run_id, "charge", 1, 2)
    assert retry.body.command_id != first.command_id
    assert run_log.run.pending_retry is None
    assert run_log.run.in_flight is not None and run_log.run.in_flight.retrier_index == 0


def test_a_timer_for_another_attempt_is_stale_and_decides_nothing(engine, run_log, make_trigger):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)
    (effect,) = engine.effects(run_log.run)
    timer = effect.message
    assert isinstance(timer, TimerFired)

    wrong_attempt = timer.model_copy(update={"body": TimerBody(purpose="retry", due_at=T0, next_attempt=3)})
    assert engine.on_timer(run_log.run, wrong_attempt, RETRYING) == []

    # The same timer firing twice: the second firing finds the retry already scheduled.
    run_log.append(engine.on_timer(run_log.run, timer, RETRYING))
    assert engine.on_timer(run_log.run, timer, RETRYING) == []


def test_a_timer_for_a_run_that_ended_meanwhile_decides_nothing(engine, run_log, make_trigger):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)
    (effect,) = engine.effects(run_log.run)
    assert isinstance(effect.message, TimerFired)
    run = run_log.run
    ended = RunFailed(
        run_id=run.run_id,
        workflow=run.workflow,
        correlation_id=run.correlation_id,
        actor="operator",
        dedupe_key=f"{run.run_id}:failed",
        body=RunFailedBody(reason="cancelled by an operator"),
    )
    run_log.append([ended])
    assert run_log.run.terminal
    assert run_log.run.pending_retry is not None  # the fold keeps it; the engine must still ignore it

    assert engine.on_timer(run_log.run, effect.message, RETRYING) == []
    assert engine.effects(run_log.run) == []


# --- choice, succeed, fail ---------------------------------------------------------------------------

TIERED = workflow(
    """
    name: tiered
    steps:
      - id: lookup
        kind: tool
        tool: crm.lookup
      - id: route
        kind: choice
        choices:
          - variable: steps.lookup.tier
            equals: gold
            next: vip
        default: standard
      - id: vip
        kind: tool
        tool: crm.vip
        end: true
      - id: standard
        kind: tool
        tool: crm.standard
    """
)


def test_a_choice_step_records_the_rule_that_matched_and_goes_to_its_target(engine, run_log, make_trigger):
    start(engine, run_log, TIERED, make_trigger("tiered"))
    run_log.append([succeeded(run_log.run, {"tier": "gold"})])

    out = run_log.append(engine.advance(run_log.run, TIERED, None))

    assert [type(e) for e in out] == [RouteDecided, StepScheduled]
    route, scheduled = out
    assert route.body.kind == "choice"
    assert route.step_id == "route"
    assert route.body.to_step == "vip"
    assert "choices[0]" in route.body.why
    assert "steps.lookup.tier" in route.body.why
    assert '"gold"' in route.body.why
    assert scheduled.step_id == "vip"
    assert scheduled.body.reason.startswith("choice route: choices[0] matched")
    assert run_log.run.routes[-1].kind == "choice"


def test_a_choice_step_without_a_matching_rule_takes_the_default_and_says_so(engine, run_log, make_trigger):
    start(engine, run_log, TIERED, make_trigger("tiered"))
    run_log.append([succeeded(run_log.run, {"tier": "silver"})])

    route, scheduled = run_log.append(engine.advance(run_log.run, TIERED, None))

    assert isinstance(route, RouteDecided)
    assert route.body.to_step == "standard"
    assert "default" in route.body.why
    assert scheduled.step_id == "standard"


def test_a_choice_on_missing_data_fails_the_run_naming_the_variable(engine, run_log, make_trigger):
    start(engine, run_log, TIERED, make_trigger("tiered"))
    run_log.append([succeeded(run_log.run, {"no_tier": True})])

    (fail,) = engine.advance(run_log.run, TIERED, None)

    assert isinstance(fail, RunFailed)
    assert "steps.lookup.tier" in fail.body.reason
    assert fail.body.failed_step == "route"


GATE = workflow(
    """
    name: gate
    steps:
      - id: check
        kind: tool
        tool: risk.check
      - id: decide
        kind: choice
        choices:
          - variable: steps.check.ok
            equals: true
            next: approved
        default: rejected
      - id: approved
        kind: succeed
        output:
          verdict: approved
          score: "${steps.check.score}"
      - id: rejected
        kind: fail
        error: risk_rejected
        cause: "score ${steps.check.score} too low"
    """
)


def test_a_succeed_step_completes_the_run_with_its_rendered_output(engine, run_log, make_trigger):
    start(engine, run_log, GATE, make_trigger("gate"))
    run_log.append([succeeded(run_log.run, {"ok": True, "score": 91})])

    out = run_log.append(engine.advance(run_log.run, GATE, None))

    assert [type(e) for e in out] == [RouteDecided, RunCompleted]
    assert out[1].body.output == {"verdict": "approved", "score": 91}
    assert "approved" in out[1].body.reason
    assert run_log.run.status is RunStatus.DONE
    assert run_log.run.output == {"verdict": "approved", "score": 91}


def test_a_fail_step_fails_the_run_with_its_error_and_rendered_cause(engine, run_log, make_trigger):
    start(engine, run_log, GATE, make_trigger("gate"))
    run_log.append([succeeded(run_log.run, {"ok": False, "score": 12})])

    out = run_log.append(engine.advance(run_log.run, GATE, None))

    assert [type(e) for e in out] == [RouteDecided, RunFailed]
    fail = out[1]
    assert "risk_rejected: score 12 too low" in fail.body.reason
    assert fail.body.failed_step == "rejected"
    assert fail.body.error_class is None
    assert run_log.run.status is RunStatus.FAILED


# --- effects -----------------------------------------------------------------------------------------


def test_an_attempt_in_flight_needs_no_effect_its_scheduled_event_is_the_executors_work(engine, run_log, make_trigger):
    (_, scheduled) = start(engine, run_log, THREE_STEPS, make_trigger("orders", ORDER))[-2:]
    attempt = run_log.run.in_flight
    assert attempt is not None and isinstance(scheduled, StepScheduled)

    assert engine.effects(run_log.run) == []

    cmd = execute_step_for(scheduled)
    assert cmd.dedupe_key == attempt.command_id
    assert (cmd.step_id, cmd.attempt) == ("lookup", 1)
    assert cmd.body.tool == "crm.lookup"
    assert cmd.body.input == attempt.input
    assert cmd.body.idempotency_key == attempt.idempotency_key
    assert cmd.body.timeout_seconds == attempt.timeout_seconds
    assert cmd.correlation_id == run_log.run.correlation_id
    # The outcome of that attempt (caused by its id) is matched to the attempt in flight.
    assert cmd.id == execute_message_id(attempt.command_id)


def test_effects_of_a_pending_retry_are_a_timer_schedule_at_the_due_time(engine, run_log, make_trigger):
    start(engine, run_log, RETRYING, make_trigger("retrying", {"amount": 5}))
    fail_and_advance(engine, run_log, RETRYING, ErrorClass.TRANSIENT)
    run = run_log.run

    (effect,) = engine.effects(run)

    timer = effect.message
    assert isinstance(timer, TimerFired)
    assert effect.subject == timers.schedule_subject("retrying", run.run_id, "retry-charge-2")
    assert effect.headers is not None
    assert effect.headers["Nats-Schedule"] == "@at 2025-03-01T12:00:02.000000Z"
    assert effect.headers["Nats-Schedule-Target"] == timers.fire_subject("retrying", run.run_id, "retry-charge-2")
    assert timer.step_id == "charge"
    assert timer.body.next_attempt == 2
    assert timer.body.due_at == T0 + timedelta(seconds=2)


def test_a_run_that_waits_for_nothing_has_no_effects(engine, run_log, make_trigger):
    start(engine, run_log, GATE, make_trigger("gate"))
    run_log.append([succeeded(run_log.run, {"ok": True, "score": 1})])
    assert engine.effects(run_log.run) == []  # the outcome is in, the next decision is not
    run_log.append(engine.advance(run_log.run, GATE, None))
    assert engine.effects(run_log.run) == []  # done


# --- loops -------------------------------------------------------------------------------------------

LOOP = workflow(
    """
    name: poller
    steps:
      - id: poll
        kind: tool
        tool: job.status
        input:
          job: "${input.job}"
        retry:
          - error_equals: [transient]
            interval_seconds: 1
      - id: check
        kind: choice
        choices:
          - variable: steps.poll.done
            equals: true
            next: finished
        default: poll
      - id: finished
        kind: succeed
    """
)


def test_each_visit_of_a_looped_step_gets_its_own_command_id_and_idempotency_key(engine, run_log, make_trigger):
    start(engine, run_log, LOOP, make_trigger("poller", {"job": "j-1"}))
    first = run_log.run.in_flight
    assert first is not None
    run_log.append([succeeded(run_log.run, {"done": False})])

    route, second = engine.advance(run_log.run, LOOP, None)

    assert isinstance(route, RouteDecided) and route.body.to_step == "poll"
    assert isinstance(second, StepScheduled)
    assert (second.step_id, second.attempt) == ("poll", 1)
    assert second.body.command_id == command_id(run_log.run.run_id, "poll", 2, 1)
    assert second.body.command_id != first.command_id
    assert second.body.idempotency_key != first.idempotency_key
    assert second.dedupe_key != run_log.events[1][1].dedupe_key


def test_a_looped_step_runs_again_on_its_second_visit_and_the_run_completes(engine, run_log, make_trigger):
    start(engine, run_log, LOOP, make_trigger("poller", {"job": "j-1"}))
    run_log.append([succeeded(run_log.run, {"done": False})])

    run_log.append(engine.advance(run_log.run, LOOP, None))

    second = run_log.run.in_flight
    assert second is not None, "the second visit of poll is not in flight"
    assert second.command_id == command_id(run_log.run.run_id, "poll", 2, 1)
    run_log.append([succeeded(run_log.run, {"done": True})])
    run_log.append(engine.advance(run_log.run, LOOP, None))
    assert run_log.run.status is RunStatus.DONE


def test_a_retry_in_a_later_visit_of_a_looped_step_has_its_own_dedupe_key(engine, run_log, make_trigger):
    start(engine, run_log, LOOP, make_trigger("poller", {"job": "j-1"}))
    (first_retry,) = fail_and_advance(engine, run_log, LOOP, ErrorClass.TRANSIENT)
    fire_pending_timer(engine, run_log, LOOP)
    run_log.append([succeeded(run_log.run, {"done": False})])
    route, second_visit = run_log.append(engine.advance(run_log.run, LOOP, None))
    assert isinstance(route, RouteDecided) and isinstance(second_visit, StepScheduled)

    (second_retry,) = fail_and_advance(engine, run_log, LOOP, ErrorClass.TRANSIENT)

    assert isinstance(second_retry, RetryScheduled)
    assert second_retry.dedupe_key != first_retry.dedupe_key


def test_the_attempt_of_a_write_step_says_it_is_a_write(engine, run_log, make_trigger):
    start(engine, run_log, THREE_STEPS, make_trigger("orders", ORDER))
    run_log.append([succeeded(run_log.run, {"account": "acc-7", "email": "ada@example.com"})])
    (scheduled,) = run_log.append(engine.advance(run_log.run, THREE_STEPS, None))
    assert isinstance(scheduled, StepScheduled)
    assert scheduled.body.side_effect == "write"

    assert execute_step_for(scheduled).body.side_effect == "write"


def test_choices_that_route_in_a_circle_without_running_a_step_fail_the_run(engine, run_log, make_trigger):
    wf = workflow(
        """
        name: circle
        steps:
          - id: ping
            kind: choice
            choices:
              - variable: input.stop
                equals: true
                next: finished
            default: pong
          - id: pong
            kind: choice
            choices:
              - variable: input.stop
                equals: true
                next: finished
            default: ping
          - id: finished
            kind: succeed
        """
    )

    out = start(engine, run_log, wf, make_trigger("circle", {"stop": False}))

    assert isinstance(out[-1], RunFailed)
    assert "routing hops" in out[-1].body.reason
    assert all(isinstance(e, RouteDecided) for e in out[1:-1])
    assert len({e.dedupe_key for e in out}) == len(out)
    assert run_log.run.status is RunStatus.FAILED
