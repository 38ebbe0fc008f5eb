"""The router's part of verify-first and Retry-After: the verify call is rendered per attempt and sent
with the command; a failure's Retry-After can push a planned retry later, never sooner."""

from __future__ import annotations

from datetime import timedelta

from router_testkit import T0, RunLog, failed, workflow

from keel_contracts.attempts import execute_step_for
from keel_contracts.commands import VerifySpec
from keel_contracts.errors import ErrorClass
from keel_contracts.events import RetryScheduled, RunFailed, StepFailed, StepScheduled
from keel_contracts.timers import TimerFired
from keel_router.engine import Engine

REFUND = workflow(
    """
    name: refunds
    steps:
      - id: refund
        kind: tool
        tool: billing.refund
        side_effect: write
        idempotency_key: "refund-${input.charge}"
        input: {charge_id: "${input.charge}", amount_cents: "${input.amount}"}
        verify:
          tool: billing.find_refund
          input:
            charge_id: "${attempt.request.charge_id}"
            key: "${attempt.idempotency_key}"
            try: "${attempt.number}"
            customer: "${input.customer}"
        retry:
          - error_equals: [transient, unknown_outcome]
            interval_seconds: 2
            backoff_rate: 2
            max_attempts: 3
        end: true
    """
)


def start(engine: Engine, log: RunLog, make_trigger, data: dict) -> list:
    return log.append(engine.on_trigger(None, make_trigger("refunds", data), REFUND))


def fail_with_retry_after(engine: Engine, log: RunLog, retry_after: float | None) -> list:
    base = failed(log.run, ErrorClass.TRANSIENT, "429")
    event = StepFailed(**{**base.model_dump(), "body": {**base.body.model_dump(), "retry_after_seconds": retry_after}})
    log.append([event])
    return log.append(engine.advance(log.run, REFUND, None))


def test_the_verify_call_is_rendered_with_the_attempt_and_carried_to_the_executor(engine, run_log, make_trigger):
    out = start(engine, run_log, make_trigger, {"charge": 7, "amount": 500, "customer": "alice"})

    scheduled = out[-1]
    assert isinstance(scheduled, StepScheduled)
    expected = VerifySpec(
        tool="billing.find_refund",
        input={"charge_id": 7, "key": "refund-7", "try": 1, "customer": "alice"},
    )
    assert scheduled.body.verify == expected
    attempt = execute_step_for(scheduled)  # what the executor runs
    assert attempt.body.verify == expected
    assert attempt.body.side_effect == "write"


def test_a_retry_renders_verify_again_with_its_own_attempt_number(engine, run_log, make_trigger):
    start(engine, run_log, make_trigger, {"charge": 7, "amount": 500, "customer": "alice"})
    fail_with_retry_after(engine, run_log, None)
    (effect,) = [e for e in engine.effects(run_log.run) if isinstance(e.message, TimerFired)]
    (retry,) = run_log.append(engine.on_timer(run_log.run, effect.message, REFUND))

    assert isinstance(retry, StepScheduled)
    assert retry.body.verify is not None
    assert retry.body.verify.input["try"] == 2
    assert retry.body.verify.input["key"] == "refund-7"  # the same key on every attempt


def test_a_step_without_verify_sends_none(engine, make_trigger):
    plain = workflow(
        """
        name: plain
        steps:
          - {id: a, kind: tool, tool: t.x, end: true}
        """
    )
    log = RunLog()
    out = log.append(engine.on_trigger(None, make_trigger("plain"), plain))

    assert isinstance(out[-1], StepScheduled) and out[-1].body.verify is None
    assert execute_step_for(out[-1]).body.verify is None


def test_a_verify_template_that_cannot_render_fails_the_run_before_any_write(engine, run_log, make_trigger):
    out = start(engine, run_log, make_trigger, {"charge": 7, "amount": 500})  # no input.customer

    assert isinstance(out[-1], RunFailed)
    assert "verify input of refund" in out[-1].body.reason
    assert "input.customer" in out[-1].body.reason


def test_a_longer_retry_after_pushes_the_retry_later(engine, run_log, make_trigger):
    start(engine, run_log, make_trigger, {"charge": 7, "amount": 500, "customer": "alice"})

    (retry,) = fail_with_retry_after(engine, run_log, 30.0)

    assert isinstance(retry, RetryScheduled)
    assert retry.body.delay_seconds == 30.0  # the plan said 2
    assert retry.body.due_at == T0 + timedelta(seconds=30)
    assert "Retry-After" in retry.body.reason
    assert run_log.run.pending_retry is not None and run_log.run.pending_retry.due_at == T0 + timedelta(seconds=30)


def test_a_shorter_retry_after_never_brings_the_retry_sooner(engine, run_log, make_trigger):
    start(engine, run_log, make_trigger, {"charge": 7, "amount": 500, "customer": "alice"})

    (retry,) = fail_with_retry_after(engine, run_log, 0.5)

    assert isinstance(retry, RetryScheduled)
    assert retry.body.delay_seconds == 2.0
    assert "Retry-After" not in retry.body.reason


def test_retry_after_does_not_create_a_retry_the_plan_does_not_allow(engine, make_trigger):
    no_retry = workflow(
        """
        name: refunds
        steps:
          - {id: refund, kind: tool, tool: billing.refund, side_effect: write, end: true}
        """
    )
    log = RunLog()
    log.append(engine.on_trigger(None, make_trigger("refunds"), no_retry))
    base = failed(log.run, ErrorClass.TRANSIENT, "429")
    event = StepFailed(**{**base.model_dump(), "body": {**base.body.model_dump(), "retry_after_seconds": 5.0}})
    log.append([event])

    (out,) = log.append(engine.advance(log.run, no_retry, None))

    assert isinstance(out, RunFailed)
    assert log.run.attempts[-1].retry_after_seconds == 5.0
