"""Parked runs in the engine: deciders, human steps and input, waits, caps and cancellation."""

from __future__ import annotations

import random
from datetime import timedelta

from engine_parking_kit import cancel, human_input
from router_testkit import T0, RunLog, failed, succeeded, workflow

from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    HumanInputReceived,
    HumanInputRejected,
    HumanInputRequested,
    RetryScheduled,
    RouteDecided,
    RunBlocked,
    RunCancelled,
    RunCompleted,
    StepScheduled,
    WaitStarted,
)
from keel_contracts.runs import RunStatus
from keel_contracts.timers import TimerBody, TimerFired
from keel_router.engine import Engine
from keel_router.workflow import Policy, Workflow
from keel_router.workflow.policy import Caps

TRIAGE = workflow(
    """
    name: triage
    steps:
      - id: classify
        kind: decide
        decider: decider.rules
        input: {text: "${input.text}"}
        min_confidence: 0.5
        options:
          - intent: refund
            payload_schema: {type: object, required: [amount], properties: {amount: {type: integer}}}
            next: pay
          - {intent: ignore, next: ignored}
      - id: pay
        kind: tool
        tool: demo.ledger
        side_effect: write
        input: {amount: "${steps.classify.payload.amount}"}
        end: true
      - {id: ignored, kind: succeed, output: {ignored: true}}
    """
)

REVIEW = workflow(
    """
    name: review
    steps:
      - id: ask
        kind: human
        queue: ops
        prompt: "Amount for ${input.customer}?"
        input_schema: {type: object, required: [amount], properties: {amount: {type: integer, minimum: 1}}}
        expires_after_seconds: 60
        escalate_to: gave_up
      - id: pay
        kind: tool
        tool: demo.ledger
        input: {amount: "${human.amount}"}
        end: true
      - {id: gave_up, kind: fail, error: no_answer}
    """
)

PAUSE = workflow(
    """
    name: pause
    steps:
      - {id: hold, kind: wait, seconds: 30}
      - {id: after, kind: succeed, output: {waited: true}}
    """
)


def start(engine: Engine, log: RunLog, wf: Workflow, make_trigger, data: dict) -> list:
    return log.append(engine.on_trigger(None, make_trigger(wf.name, data), wf))


def fire(engine: Engine, log: RunLog, wf: Workflow, body: TimerBody | None = None) -> list:
    (effect,) = [e for e in engine.effects(log.run) if isinstance(e.message, TimerFired)]
    timer = effect.message
    if body is not None:
        timer = timer.model_copy(update={"body": body})
    return log.append(engine.on_timer(log.run, timer, wf))


# --- decide ---------------------------------------------------------------------------------------------
def test_a_decide_step_asks_its_decider_with_the_declared_options(engine, run_log, make_trigger):
    _, scheduled = start(engine, run_log, TRIAGE, make_trigger, {"text": "refund please"})

    assert isinstance(scheduled, StepScheduled) and scheduled.body.tool == "decider.rules"
    assert scheduled.body.side_effect == "read"
    assert [o["intent"] for o in scheduled.body.input["options"]] == ["refund", "ignore"]
    assert scheduled.body.input["text"] == "refund please" and scheduled.body.input["min_confidence"] == 0.5


def test_an_accepted_decision_records_why_and_goes_to_the_options_next_step(engine, run_log, make_trigger):
    start(engine, run_log, TRIAGE, make_trigger, {"text": "refund"})
    run_log.append([succeeded(run_log.run, {"intent": "refund", "payload": {"amount": 4}, "confidence": 0.9})])

    route, pay = run_log.append(engine.advance(run_log.run, TRIAGE, None))

    assert isinstance(route, RouteDecided) and route.body.kind == "decide" and route.body.to_step == "pay"
    assert "intent 'refund' (confidence 0.9)" in route.body.why
    assert route.body.writes == {"steps.classify": {"intent": "refund", "payload": {"amount": 4}, "confidence": 0.9}}
    assert isinstance(pay, StepScheduled) and pay.body.input == {"amount": 4}


def test_undeclared_incomplete_or_unsure_decisions_park_in_needs_human_naming_the_missing_piece(engine, make_trigger):
    cases = [
        ({"intent": "launch", "payload": {}, "confidence": 0.9}, "intent", "not declared"),
        ({"intent": "refund", "payload": {}, "confidence": 0.9}, "payload.amount", "required field is missing"),
        ({"intent": "refund", "payload": {"amount": 1}, "confidence": 0.2}, "intent", "below min_confidence"),
        ({"unsure": True}, "intent", "unsure"),
        ({"intent": 42}, "intent", "unsure"),
    ]
    for output, missing, why in cases:
        log = RunLog()
        start(engine, log, TRIAGE, make_trigger, {"text": "?"})
        log.append([succeeded(log.run, output)])

        (asked,) = log.append(engine.advance(log.run, TRIAGE, None))

        assert isinstance(asked, HumanInputRequested), output
        assert asked.body.kind == "decide" and asked.body.missing == missing and why in asked.body.reason
        assert asked.body.context["decider_output"] == output
        assert log.run.status is RunStatus.NEEDS_HUMAN and log.run.view().current_step == "classify"
        assert engine.effects(log.run) == []
        assert [a.step_id for a in log.run.attempts] == ["classify"]  # no write attempted


def test_a_person_settles_a_parked_decision_after_invalid_input_is_refused(engine, run_log, make_trigger):
    start(engine, run_log, TRIAGE, make_trigger, {"text": "?"})
    run_log.append([succeeded(run_log.run, {"unsure": True})])
    run_log.append(engine.advance(run_log.run, TRIAGE, None))

    (refused,) = run_log.append(engine.on_human_input(run_log.run, human_input(run_log.run, {"intent": "x"}), TRIAGE))
    assert isinstance(refused, HumanInputRejected) and "not declared" in refused.body.problems[0]
    assert run_log.run.status is RunStatus.NEEDS_HUMAN

    cmd = human_input(run_log.run, {"intent": "refund", "payload": {"amount": 2}}, cmd_id="cmd-2")
    received, route, pay = run_log.append(engine.on_human_input(run_log.run, cmd, TRIAGE))
    assert isinstance(received, HumanInputReceived) and received.body.submitted_by == "ops@example.com"
    assert route.body.kind == "decide" and "ops@example.com chose intent 'refund'" in route.body.why
    assert isinstance(pay, StepScheduled) and pay.body.input == {"amount": 2}
    assert engine.on_human_input(run_log.run, cmd, TRIAGE) == []  # the same command again decides nothing


def test_a_decider_that_fails_transiently_is_asked_again_then_a_person_decides(engine, run_log, make_trigger):
    start(engine, run_log, TRIAGE, make_trigger, {"text": "?"})
    run_log.append([failed(run_log.run, ErrorClass.TRANSIENT, "429")])
    (retry,) = run_log.append(engine.advance(run_log.run, TRIAGE, None))
    assert isinstance(retry, RetryScheduled)
    (again,) = fire(engine, run_log, TRIAGE)
    assert isinstance(again, StepScheduled) and again.attempt == 2 and again.body.input["options"]
    run_log.append([failed(run_log.run, ErrorClass.AUTH, "401")])

    (asked,) = run_log.append(engine.advance(run_log.run, TRIAGE, None))

    assert isinstance(asked, HumanInputRequested) and "failed (auth)" in asked.body.reason


# --- human ----------------------------------------------------------------------------------------------
def test_a_human_step_parks_with_its_prompt_and_context_and_continues_with_valid_input(engine, run_log, make_trigger):
    _, asked = start(engine, run_log, REVIEW, make_trigger, {"customer": "ACME"})
    assert isinstance(asked, HumanInputRequested) and asked.body.prompt == "Amount for ACME?"
    assert asked.body.queue == "ops" and asked.body.context["input"] == {"customer": "ACME"}
    assert asked.body.expires_at == T0 + timedelta(seconds=60)
    assert run_log.run.status is RunStatus.NEEDS_HUMAN

    (refused,) = run_log.append(engine.on_human_input(run_log.run, human_input(run_log.run, {"amount": 0}), REVIEW))
    assert refused.body.problems == ["input.amount: 0 is less than the minimum of 1"]
    cmd = human_input(run_log.run, {"amount": 5}, cmd_id="c2", step_id="ask")
    _, route, pay = run_log.append(engine.on_human_input(run_log.run, cmd, REVIEW))

    assert route.body.kind == "human" and route.body.writes == {"steps.ask": {"amount": 5}}
    assert pay.body.input == {"amount": 5}  # ${human.amount}


def test_input_for_another_step_or_a_run_not_waiting_is_refused(engine, run_log, make_trigger):
    start(engine, run_log, REVIEW, make_trigger, {"customer": "ACME"})
    (wrong,) = engine.on_human_input(run_log.run, human_input(run_log.run, {"amount": 1}, step_id="pay"), REVIEW)
    assert isinstance(wrong, HumanInputRejected) and "waits for input to step ask, not pay" in wrong.body.problems[0]

    log = RunLog()
    start(engine, log, PAUSE, make_trigger, {})
    (refused,) = engine.on_human_input(log.run, human_input(log.run, {}), PAUSE)
    assert "not waiting for human input (status waiting" in refused.body.problems[0]


def test_a_human_steps_deadline_escalates_and_a_stale_deadline_timer_does_nothing(engine, run_log, make_trigger):
    start(engine, run_log, REVIEW, make_trigger, {"customer": "ACME"})
    (effect,) = engine.effects(run_log.run)
    assert effect.message.body.purpose == "human_expiry" and effect.headers["Nats-Schedule"].startswith("@at 2025")
    stale = effect.message.body.model_copy(update={"timer_id": "human-ask-999"})
    assert fire(engine, run_log, REVIEW, stale) == []

    route, failed_run = fire(engine, run_log, REVIEW)

    assert route.body.kind == "human" and route.body.to_step == "gave_up" and "no input" in route.body.why
    assert run_log.run.status is RunStatus.FAILED and "no_answer" in failed_run.body.reason


# --- wait -----------------------------------------------------------------------------------------------
def test_a_wait_parks_until_its_timer_and_a_late_or_repeated_timer_applies_nothing(engine, run_log, make_trigger):
    _, started = start(engine, run_log, PAUSE, make_trigger, {})
    assert isinstance(started, WaitStarted) and started.body.due_at == T0 + timedelta(seconds=30)
    assert run_log.run.status is RunStatus.WAITING
    (effect,) = engine.effects(run_log.run)
    timer = effect.message
    assert timer.body.purpose == "wait" and timer.body.timer_id == started.body.timer_id

    route, done = run_log.append(engine.on_timer(run_log.run, timer, PAUSE))

    assert route.body.kind == "wait" and "fired" in route.body.why
    assert isinstance(done, RunCompleted) and done.body.output == {"waited": True}
    assert engine.on_timer(run_log.run, timer, PAUSE) == []
    assert engine.effects(run_log.run) == []


# --- caps and cancellation ------------------------------------------------------------------------------
def test_caps_block_the_run_before_the_step_or_attempt_that_would_exceed_them(make_trigger):
    three = workflow(
        """
        name: three
        steps:
          - {id: a, kind: tool, tool: t.a}
          - {id: b, kind: tool, tool: t.b, retry: [{error_equals: [transient], interval_seconds: 1}]}
          - {id: c, kind: tool, tool: t.c}
        """
    )
    steps = Engine(lambda: T0, random.Random(0), policy=Policy(caps=Caps(max_steps_per_run=2)))
    log = RunLog()
    start(steps, log, three, make_trigger, {})
    log.append([succeeded(log.run, {})])
    log.append(steps.advance(log.run, three, None))
    log.append([succeeded(log.run, {})])
    (blocked,) = log.append(steps.advance(log.run, three, None))
    assert isinstance(blocked, RunBlocked) and blocked.body.cap == "max_steps_per_run" and blocked.step_id == "c"
    assert log.run.status is RunStatus.BLOCKED and "not starting step c" in log.run.reason
    assert steps.advance(log.run, three, None) == [] and steps.effects(log.run) == []

    attempts = Engine(lambda: T0, random.Random(0), policy=Policy(caps=Caps(max_total_attempts=2)))
    log = RunLog()
    start(attempts, log, three, make_trigger, {})
    log.append([succeeded(log.run, {})])
    log.append(attempts.advance(log.run, three, None))
    log.append([failed(log.run, ErrorClass.TRANSIENT)])
    log.append(attempts.advance(log.run, three, None))
    (blocked,) = fire(attempts, log, three)
    assert blocked.body.cap == "max_total_attempts" and "not starting attempt 2 of b" in blocked.body.reason

    now = [T0]
    duration = Engine(lambda: now[0], policy=Policy(caps=Caps(max_run_duration_seconds=3600)))
    log = RunLog()
    start(duration, log, three, make_trigger, {})
    log.append([succeeded(log.run, {})])
    now[0] = T0 + timedelta(hours=2)
    (blocked,) = log.append(duration.advance(log.run, three, None))
    assert blocked.body.cap == "max_run_duration_seconds"


def test_cancel_ends_the_run_an_attempt_in_flight_is_recorded_and_nothing_follows(engine, run_log, make_trigger):
    start(engine, run_log, TRIAGE, make_trigger, {"text": "refund"})
    (cancelled,) = run_log.append(engine.on_cancel(run_log.run, cancel(run_log.run)))

    assert isinstance(cancelled, RunCancelled) and cancelled.body.in_flight_step == "classify"
    assert run_log.run.status is RunStatus.CANCELLED and engine.effects(run_log.run) == []
    run_log.append([succeeded(run_log.run, {"intent": "refund", "payload": {"amount": 1}}, run_log.run.attempts[0])])
    assert run_log.run.attempts[0].outcome == "succeeded"  # the outcome is recorded...
    assert engine.advance(run_log.run, TRIAGE, None) == []  # ...and nothing follows it
    assert engine.on_cancel(run_log.run, cancel(run_log.run, "cancel-2")) == []


def test_a_cancelled_parked_run_ignores_its_timer(engine, run_log, make_trigger):
    start(engine, run_log, PAUSE, make_trigger, {})
    (effect,) = engine.effects(run_log.run)
    run_log.append(engine.on_cancel(run_log.run, cancel(run_log.run)))

    assert engine.on_timer(run_log.run, effect.message, PAUSE) == []
