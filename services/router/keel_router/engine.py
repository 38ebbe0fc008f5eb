"""Deciding what happens next in a run: a pure function of the run's state and its workflow.

Because decisions depend on state, not on which message arrived, a repeated or late message makes no
new decision: the state already shows its effect. The router appends what this module returns (one
atomic, sequence-checked transition) and then publishes the effects of the resulting state.
"""

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts import timers
from keel_contracts.commands import ExecuteStep, ExecuteStepBody, TriggerRun, execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RetryScheduledBody,
    RouteDecided,
    RouteDecidedBody,
    RunCompleted,
    RunCompletedBody,
    RunFailed,
    RunFailedBody,
    RunStarted,
    RunStartedBody,
    StepScheduled,
    StepScheduledBody,
    TriggerJoined,
    TriggerJoinedBody,
)
from keel_contracts.timers import TimerBody, TimerFired
from keel_router.aggregate import Attempt, RunState, apply
from keel_router.workflow.conditions import evaluate_choice
from keel_router.workflow.errors import RunDataError
from keel_router.workflow.models import ChoiceStep, FailStep, SucceedStep, ToolStep, Workflow
from keel_router.workflow.retry import match_catcher, plan_retry
from keel_router.workflow.runtime import catch_writes
from keel_router.workflow.templating import make_context, render, set_path

#: Guard against a workflow whose choices loop without ever running a tool.
MAX_ROUTING_HOPS = 100


@dataclass(frozen=True)
class Effect:
    """Something to publish after a transition is stored; re-publishing it is always harmless."""

    subject: str
    message: Message
    dedupe_key: str
    # For timers: the schedule headers (`Nats-Schedule` etc.).
    headers: dict[str, str] | None = None


class Engine:
    def __init__(
        self,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
        actor: str = s.ROUTER,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._actor = actor

    # --- envelopes ---------------------------------------------------------------------------------
    def _env(self, state: RunState, dedupe_key: str, causation_id: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": state.run_id,
            "workflow": state.workflow,
            "tenant": state.tenant,
            "correlation_id": state.correlation_id,
            "causation_id": causation_id,
            "actor": self._actor,
            "dedupe_key": dedupe_key,
            "occurred_at": self._clock(),
            **extra,
        }

    # --- triggers ----------------------------------------------------------------------------------
    def on_trigger(self, state: RunState | None, trigger: TriggerRun, workflow: Workflow) -> list[Message]:
        if state is not None:
            if trigger.id in state.triggers:
                return []  # this very trigger was already handled (a redelivery)
            return [
                TriggerJoined(
                    **self._env(state, f"{state.run_id}:joined:{trigger.id}", trigger.id),
                    body=TriggerJoinedBody(
                        intent_key=trigger.body.intent_key, source=trigger.body.source, trigger_id=trigger.id
                    ),
                )
            ]
        started = RunStarted(
            run_id=trigger.run_id,
            workflow=trigger.workflow,
            tenant=trigger.tenant,
            correlation_id=trigger.correlation_id,
            causation_id=trigger.id,
            actor=self._actor,
            dedupe_key=f"{trigger.run_id}:started",
            occurred_at=self._clock(),
            body=RunStartedBody(
                intent_key=trigger.body.intent_key,
                source=trigger.body.source,
                trigger_id=trigger.id,
                input=dict(trigger.body.input),
                workflow_version=workflow.version,
            ),
        )
        fresh = apply(None, 1, started)
        assert fresh is not None
        return [started, *self.advance(fresh, workflow, trigger.id)]

    # --- timers ------------------------------------------------------------------------------------
    def on_timer(self, state: RunState, timer: TimerFired, workflow: Workflow) -> list[Message]:
        pending = state.pending_retry
        if (
            state.terminal
            or pending is None
            or pending.step_id != timer.step_id
            or pending.next_attempt != timer.body.next_attempt
        ):
            return []  # stale: the run no longer waits for this timer
        step = workflow.step(pending.step_id)
        if not isinstance(step, ToolStep):
            return []
        previous = state.attempt(pending.step_id, pending.next_attempt - 1)
        reason = f"retry {pending.next_attempt} of {step.id} (timer due {pending.due_at:%H:%M:%S})"
        return [self._schedule(state, step, pending.next_attempt, reason, timer.id, previous)]

    # --- advancing ---------------------------------------------------------------------------------
    def advance(self, state: RunState, workflow: Workflow, causation_id: str | None) -> list[Message]:
        """The events that move the run on from `state`, or none when it waits for something."""
        if state.terminal or state.in_flight is not None or state.pending_retry is not None:
            return []
        last = state.last_attempt
        if last is None:
            if state.routes:
                return []  # only a decision in flight without an attempt: cannot happen, stay put
            return self._enter(state, workflow, workflow.start_step_id, "start of the workflow", causation_id)
        step = workflow.step(last.step_id)
        if not isinstance(step, ToolStep):
            return [self._fail(state, f"step {last.step_id} is not a tool step in this workflow version", None)]
        if last.outcome == "succeeded":
            nxt = workflow.next_of(step)
            if nxt is None:
                return [
                    self._complete(state, last.output or {}, f"{step.id} succeeded; end of the workflow", causation_id)
                ]
            return self._enter(state, workflow, nxt, f"after {step.id} succeeded", causation_id)
        if last.outcome == "failed":
            return self._after_failure(state, workflow, step, last, causation_id)
        return []

    def _after_failure(
        self, state: RunState, workflow: Workflow, step: ToolStep, last: Attempt, causation_id: str | None
    ) -> list[Message]:
        error_class = last.error_class or ErrorClass.PERMANENT
        counts = self._retries_by_retrier(state, step.id)
        plan = plan_retry(step.retry, error_class, counts, self._rng)
        if plan is not None:
            due = self._clock() + timedelta(seconds=plan.delay_seconds)
            return [
                RetryScheduled(
                    **self._env(
                        state,
                        f"{state.run_id}:{step.id}:{last.visit}:{last.attempt}:retry",
                        causation_id,
                        step_id=step.id,
                        attempt=last.attempt,
                    ),
                    body=RetryScheduledBody(
                        next_attempt=last.attempt + 1,
                        retrier_index=plan.retrier_index,
                        error_class=error_class,
                        delay_seconds=plan.delay_seconds,
                        due_at=due,
                        reason=f"{step.id} failed ({error_class}): {plan.reason}"[:1024],
                    ),
                )
            ]
        catcher = match_catcher(step.catch, error_class)
        if catcher is not None:
            why = f"{step.id} failed with {error_class} ({(last.error or '')[:200]}); caught, going to {catcher.next}"
            error_doc: dict[str, JsonValue] = {"error": str(error_class), "message": last.error or ""}
            try:
                writes = catch_writes(step, catcher, error_doc, self._context(state))
            except RunDataError as exc:
                return [self._fail(state, f"fallback result of {step.id}: {exc}", error_class, step.id)]
            route = RouteDecided(
                **self._env(
                    state, f"{state.run_id}:{step.id}:{last.visit}:{last.attempt}:caught", causation_id, step_id=step.id
                ),
                body=RouteDecidedBody(kind="catch", to_step=catcher.next, why=why, writes=writes),
            )
            routed = apply(state, state.last_seq + 1, route)
            assert routed is not None
            return [route, *self._enter(routed, workflow, catcher.next, why, causation_id)]
        retried = f" after {last.attempt} attempts" if last.attempt > 1 else ""
        return [
            self._fail(
                state,
                f"{step.id} failed with {error_class}{retried}: {(last.error or '')[:300]}",
                error_class,
                step.id,
            )
        ]

    @staticmethod
    def _retries_by_retrier(state: RunState, step_id: str) -> dict[int, int]:
        """Retries each retrier made since the step was last entered (a loop back resets them)."""
        counts: dict[int, int] = {}
        for attempt in state.attempts_of(step_id):
            if attempt.attempt == 1:
                counts = {}
            elif attempt.retrier_index is not None:
                counts[attempt.retrier_index] = counts.get(attempt.retrier_index, 0) + 1
        return counts

    def _enter(
        self, state: RunState, workflow: Workflow, step_id: str, why: str, causation_id: str | None
    ) -> list[Message]:
        """Events for arriving at `step_id`, following choices until a step that waits for work."""
        out: list[Message] = []
        for _ in range(MAX_ROUTING_HOPS):
            step = workflow.step(step_id)
            match step:
                case ToolStep():
                    return [*out, self._schedule(state, step, 1, why, causation_id, None)]
                case SucceedStep():
                    ctx = self._context(state)
                    output: JsonValue = state.last_attempt.output if state.last_attempt else {}
                    if "output" in step.model_fields_set:
                        try:
                            output = render(step.output, ctx)
                        except RunDataError as exc:
                            return [*out, self._fail(state, f"output of {step.id}: {exc}", None, step.id)]
                    doc = output if isinstance(output, dict) else {"result": output}
                    return [
                        *out,
                        self._complete(
                            state,
                            cast(dict[str, JsonValue], doc),
                            f"{why}; reached succeed step {step.id}",
                            causation_id,
                        ),
                    ]
                case FailStep():
                    cause = step.error
                    if step.cause is not None:
                        try:
                            cause = f"{step.error}: {render(step.cause, self._context(state))}"
                        except RunDataError as exc:
                            cause = f"{step.error} (cause unavailable: {exc})"
                    return [*out, self._fail(state, f"{why}; fail step {step.id}: {cause}", None, step.id)]
                case ChoiceStep():
                    try:
                        nxt, rule = evaluate_choice(step, self._context(state))
                    except RunDataError as exc:
                        return [*out, self._fail(state, f"choice {step.id}: {exc}", None, step.id)]
                    route = RouteDecided(
                        **self._env(
                            state,
                            f"{state.run_id}:{step.id}:{state.last_seq}:choice",
                            causation_id,
                            step_id=step.id,
                        ),
                        body=RouteDecidedBody(kind="choice", to_step=nxt, why=rule[:4096]),
                    )
                    out.append(route)
                    routed = apply(state, state.last_seq + 1, route)
                    assert routed is not None
                    state = routed
                    step_id, why = nxt, f"choice {step.id}: {rule}"
                case _:
                    return [
                        *out,
                        self._fail(
                            state,
                            f"step {step.id} is a {step.kind} step, which this router version cannot run yet",
                            None,
                            step.id,
                        ),
                    ]
        return [
            *out,
            self._fail(state, f"more than {MAX_ROUTING_HOPS} routing hops without running a step", None),
        ]

    def _context(self, state: RunState) -> dict[str, Any]:
        data: dict[str, Any] = {"steps": {}, "errors": {}}
        for path, value in state.data_writes:
            set_path(data, path, value)
        return make_context(
            trigger_input=state.input,
            steps=data["steps"],
            errors=data["errors"],
            run_id=state.run_id,
            workflow=state.workflow,
            intent_key=state.intent_key,
        )

    def _schedule(
        self,
        state: RunState,
        step: ToolStep,
        attempt: int,
        why: str,
        causation_id: str | None,
        previous: Attempt | None,
    ) -> Message:
        visit = 1 + sum(1 for a in state.attempts_of(step.id) if a.attempt == 1) - (1 if previous else 0)
        if previous is not None:
            # A retry sends exactly what the failed attempt sent, under the same idempotency key, so the
            # system of record can recognise it.
            payload, key = previous.input, previous.idempotency_key
        else:
            ctx = self._context(state)
            try:
                rendered = render(step.input, ctx)
                key = (
                    str(render(step.idempotency_key, ctx))
                    if step.idempotency_key
                    else f"keel-{state.run_id}-{step.id}-{visit}"
                )
            except RunDataError as exc:
                return self._fail(state, f"input of {step.id}: {exc}", None, step.id)
            payload = rendered if isinstance(rendered, dict) else {"value": rendered}
        return StepScheduled(
            **self._env(
                state,
                f"{state.run_id}:{step.id}:{visit}:{attempt}:scheduled",
                causation_id,
                step_id=step.id,
                attempt=attempt,
            ),
            body=StepScheduledBody(
                tool=step.tool,
                input=payload,
                idempotency_key=key,
                command_id=command_id(state.run_id, step.id, visit, attempt),
                timeout_seconds=step.timeout_seconds,
                reason=why[:1024],
                result_path=step.output_path,
                side_effect=step.side_effect,
            ),
        )

    def _complete(self, state: RunState, output: dict[str, JsonValue], why: str, causation_id: str | None) -> Message:
        return RunCompleted(
            **self._env(state, f"{state.run_id}:completed", causation_id),
            body=RunCompletedBody(output=output, reason=why[:1024]),
        )

    def _fail(self, state: RunState, why: str, error_class: ErrorClass | None, step_id: str | None = None) -> Message:
        return RunFailed(
            **self._env(state, f"{state.run_id}:failed", None),
            body=RunFailedBody(reason=why[:1024], error_class=error_class, failed_step=step_id),
        )

    # --- effects -----------------------------------------------------------------------------------
    def effects(self, state: RunState) -> list[Effect]:
        """What must have been published for the run to make progress from `state`: the command of the
        attempt in flight, or the timer of the pending retry."""
        out: list[Effect] = []
        attempt = state.in_flight
        if attempt is not None and not state.terminal:
            cmd = ExecuteStep(
                id=execute_message_id(attempt.command_id),
                run_id=state.run_id,
                workflow=state.workflow,
                tenant=state.tenant,
                step_id=attempt.step_id,
                attempt=attempt.attempt,
                correlation_id=state.correlation_id,
                actor=self._actor,
                dedupe_key=attempt.command_id,
                occurred_at=self._clock(),
                body=ExecuteStepBody(
                    tool=attempt.tool,
                    input=attempt.input,
                    idempotency_key=attempt.idempotency_key,
                    timeout_seconds=attempt.timeout_seconds,
                    side_effect="write" if attempt.side_effect == "write" else "read",
                ),
            )
            out.append(Effect(s.execute_subject(state.run_id), cmd, attempt.command_id))
        pending = state.pending_retry
        if pending is not None and not state.terminal:
            timer_id = f"retry-{pending.step_id}-{pending.next_attempt}"
            fired = TimerFired(
                id=hashlib.sha256(f"{state.run_id}:{timer_id}".encode()).hexdigest()[:32],
                run_id=state.run_id,
                workflow=state.workflow,
                tenant=state.tenant,
                step_id=pending.step_id,
                attempt=pending.next_attempt,
                correlation_id=state.correlation_id,
                actor=self._actor,
                dedupe_key=f"{state.run_id}:{timer_id}",
                body=TimerBody(purpose="retry", due_at=pending.due_at, next_attempt=pending.next_attempt),
            )
            out.append(
                Effect(
                    timers.schedule_subject(state.workflow, state.run_id, timer_id),
                    fired,
                    f"{state.run_id}:{timer_id}:{pending.due_at.isoformat()}",
                    headers={
                        "Nats-Schedule": f"@at {pending.due_at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
                        "Nats-Schedule-Target": timers.fire_subject(state.workflow, state.run_id, timer_id),
                        "Nats-Schedule-TTL": "168h",
                    },
                )
            )
        return out


def command_id(run_id: str, step_id: str, visit: int, attempt: int) -> str:
    """The dedupe key of one attempt's execute command: run, step, visit of the step, attempt."""
    return f"{run_id}.{step_id}.{visit}.{attempt}"
