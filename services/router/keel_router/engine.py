"""Deciding what happens next in a run: a pure function of the run's state and its workflow.

Because decisions depend on state, not on which message arrived, a repeated or late message makes no
new decision: the state already shows its effect. The router appends what this module returns (one
atomic, sequence-checked transition) and then publishes the effects of the resulting state.
"""

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts import timers
from keel_contracts.approvals import DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES
from keel_contracts.commands import (
    CancelRun,
    HumanInput,
    TriggerRun,
    VerifySpec,
)
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RetryScheduledBody,
    RouteDecided,
    RouteDecidedBody,
    RunCancelled,
    RunCancelledBody,
    RunStarted,
    RunStartedBody,
    StepScheduled,
    StepScheduledBody,
    TriggerJoined,
    TriggerJoinedBody,
)
from keel_contracts.timers import TimerBody, TimerFired
from keel_router.aggregate import Approval, Attempt, RunState, apply
from keel_router.caps import blocked, blocked_by_approval_payload, blocked_by_cap, blocked_by_payload
from keel_router.emit import Emitter, run_context
from keel_router.gates import (
    POLICY_GATE_EXPIRY_SECONDS,
    GateClosed,
    GateOpen,
    approval_result,
    approval_step_target,
    check_gate,
    describe_decision,
    render_payload,
    request_approval,
    withdrawals,
)
from keel_router.parking import (
    ask_human,
    ask_human_to_decide,
    decision_options,
    settle_decision,
    start_wait,
    take_input,
)
from keel_router.workflow.conditions import evaluate_choice
from keel_router.workflow.errors import RunDataError
from keel_router.workflow.models import (
    ApprovalStep,
    ChoiceStep,
    DecideStep,
    FailStep,
    HumanStep,
    SucceedStep,
    ToolStep,
    WaitStep,
    Workflow,
)
from keel_router.workflow.policy import CapHit, Policy
from keel_router.workflow.retry import Retrier, match_catcher, plan_retry
from keel_router.workflow.runtime import DecisionNeedsHuman, catch_writes, resolve_wait
from keel_router.workflow.templating import render

#: Guard against a workflow whose choices loop without ever running a tool.
MAX_ROUTING_HOPS = 100

#: A decide step declares no retries of its own: a decider that is briefly unavailable (rate limit,
#: 5xx, timeout) is asked again twice; any other failure hands the decision to a person.
DECIDER_RETRY = (Retrier(error_equals=["transient", "timeout"], interval_seconds=2.0, max_attempts=2),)
DECIDER_TIMEOUT_SECONDS = 60.0


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
        policy: Policy | None = None,
        max_approval_payload_bytes: int = DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._actor = actor
        self._emit = Emitter(clock, actor)
        # Without a policy file every action class still needs approval (the workflow package's default).
        self._policy = policy or Policy()
        self._max_approval_payload_bytes = max_approval_payload_bytes

    def blocked(
        self, state: RunState, hit: CapHit, not_doing: str, step_id: str | None, causation_id: str | None
    ) -> Message:
        """A `run_blocked` event for a limit the router found outside the engine's own checks."""
        return blocked(self._emit, state, hit, not_doing, step_id, causation_id)

    def with_withdrawals(self, state: RunState | None, events: Sequence[Message]) -> list[Message]:
        """`events`, and when they end the run, the withdrawal of every approval it still waits for."""
        return [*events, *withdrawals(self._emit, state, events)]

    # --- envelopes ---------------------------------------------------------------------------------
    def _env(self, state: RunState, dedupe_key: str, causation_id: str | None, **extra: Any) -> dict[str, Any]:
        return self._emit.env(state, dedupe_key, causation_id, **extra)

    # --- triggers ----------------------------------------------------------------------------------
    def start(self, trigger: TriggerRun, workflow: Workflow) -> RunStarted:
        """The `run_started` of a new run for `trigger`. When the run's first move is one tool step's
        attempt, the event carries it (`first_step`), so the start is one write and the executors can begin
        at once (decision 025); anything else that follows (an approval, a choice, a wait, a refusal by a
        cap) is `advance` on the started run, stored on its own."""
        started = self._started(trigger, workflow)
        follow = self.advance(self._fold_start(started), workflow, trigger.id)
        if len(follow) == 1 and isinstance(follow[0], StepScheduled):
            return started.with_first_step(follow[0])
        return started

    @staticmethod
    def _fold_start(started: RunStarted) -> RunState:
        state = apply(None, 0, started)
        assert state is not None  # a run_started always folds
        return state

    def _started(self, trigger: TriggerRun, workflow: Workflow) -> RunStarted:
        return RunStarted(
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
                triggered_by=trigger.actor,
            ),
        )

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
        started = self.start(trigger, workflow)
        return [started, *self.advance(self._fold_start(started), workflow, trigger.id)]

    # --- timers ------------------------------------------------------------------------------------
    def on_timer(self, state: RunState, timer: TimerFired, workflow: Workflow) -> list[Message]:
        if timer.body.purpose != "retry":
            return self._park_timer(state, timer, workflow)
        pending = state.pending_retry
        if (
            state.terminal
            or pending is None
            or pending.step_id != timer.step_id
            or pending.next_attempt != timer.body.next_attempt
        ):
            return []  # stale: the run no longer waits for this timer
        step = workflow.step(pending.step_id)
        if not isinstance(step, ToolStep | DecideStep):
            return []
        blocked = blocked_by_cap(
            self._emit, state, self._policy, f"attempt {pending.next_attempt} of {step.id}", step.id, timer.id
        )
        if blocked is not None:
            return [blocked]
        previous = state.attempt(pending.step_id, pending.next_attempt - 1)
        reason = f"retry {pending.next_attempt} of {step.id} (timer due {pending.due_at:%H:%M:%S})"
        if isinstance(step, DecideStep):
            return [self._schedule_decider(state, step, pending.next_attempt, reason, timer.id, previous)]
        return [self._schedule(state, step, pending.next_attempt, reason, timer.id, previous)]

    def _park_timer(self, state: RunState, timer: TimerFired, workflow: Workflow) -> list[Message]:
        """A wait ended, or a human step's deadline passed; a timer for a park the run has left is stale."""
        park = state.park
        if state.terminal or park is None or park.timer_id is None or park.timer_id != timer.body.timer_id:
            return []
        step = workflow.step(park.step_id or "")
        due = f"{park.due_at:%Y-%m-%d %H:%M:%S}Z" if park.due_at else "?"
        if timer.body.purpose == "wait" and isinstance(step, WaitStep):
            nxt = workflow.next_of(step)
            why = f"wait {step.id} ended: its durable timer (due {due}) fired"
            return self._follow(state, workflow, [], self._emit.route(state, step.id, "wait", nxt, why, timer.id))
        if timer.body.purpose == "human_expiry" and isinstance(step, HumanStep) and step.escalate_to is not None:
            why = f"no input for human step {step.id} by {due}; escalating to {step.escalate_to}"
            route = self._emit.route(state, step.id, "human", step.escalate_to, why, timer.id)
            return self._follow(state, workflow, [], route)
        return []

    # --- router commands ---------------------------------------------------------------------------
    def on_human_input(self, state: RunState, cmd: HumanInput, workflow: Workflow) -> list[Message]:
        """Input for a parked run: accepted (the run continues) or refused with the problems named."""
        if cmd.id in state.commands:
            return []  # this very command was handled already (a redelivery)
        outcome = take_input(self._emit, state, workflow, cmd, self._policy)
        if outcome.route is None:
            return outcome.events
        return self._follow(state, workflow, outcome.events, outcome.route, outcome.output)

    def on_cancel(self, state: RunState, cmd: CancelRun) -> list[Message]:
        if state.terminal or cmd.id in state.commands:
            return []
        in_flight = state.in_flight
        note = f"; {in_flight.step_id} was already sent and finishes, nothing follows it" if in_flight else ""
        return [
            RunCancelled(
                **self._env(state, f"{state.run_id}:cancelled", cmd.id),
                body=RunCancelledBody(
                    reason=f"cancelled by {cmd.body.requested_by}: {cmd.body.reason}{note}"[:1024],
                    requested_by=cmd.body.requested_by,
                    in_flight_step=in_flight.step_id if in_flight else None,
                ),
            )
        ]

    # --- advancing ---------------------------------------------------------------------------------
    def advance(self, state: RunState, workflow: Workflow, causation_id: str | None) -> list[Message]:
        """The events that move the run on from `state`, or none when it waits for something."""
        if state.terminal or state.in_flight is not None or state.pending_retry is not None:
            return []
        park = state.park
        if park is not None:
            # Human input, timers and cancellation arrive through their own entry points; only an
            # approval's decision is a run event that `advance` acts on.
            approval = state.approval(park.approval_id) if park.kind == "approval" else None
            if approval is None or approval.status == "pending":
                return []
            return self._after_approval(state, workflow, approval, causation_id)
        last = state.last_attempt
        if last is None:
            if state.routes:
                return []  # only a decision in flight without an attempt: cannot happen, stay put
            return self._enter(state, workflow, workflow.start_step_id, "start of the workflow", causation_id)
        step = workflow.step(last.step_id)
        if isinstance(step, DecideStep):
            return self._after_decider(state, workflow, step, last, causation_id)
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
        self,
        state: RunState,
        workflow: Workflow,
        step: ToolStep | DecideStep,
        last: Attempt,
        causation_id: str | None,
    ) -> list[Message]:
        error_class = last.error_class or ErrorClass.PERMANENT
        counts = self._retries_by_retrier(state, step.id)
        retriers = step.retry if isinstance(step, ToolStep) else list(DECIDER_RETRY)
        plan = plan_retry(retriers, error_class, counts, self._rng)
        if plan is not None:
            # The retry plan decides whether to retry; the system of record's Retry-After can only
            # push the retry later, never sooner (nor create a retry the plan did not allow).
            delay = max(plan.delay_seconds, last.retry_after_seconds or 0.0)
            due = self._clock() + timedelta(seconds=delay)
            reason = f"{step.id} failed ({error_class}): {plan.reason}{_retry_after_note(last, plan.delay_seconds)}"
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
                        delay_seconds=delay,
                        due_at=due,
                        reason=reason[:1024],
                    ),
                )
            ]
        if isinstance(step, DecideStep):
            # A decider that cannot answer is an unsure decider: a person decides instead.
            missing = DecisionNeedsHuman(
                "intent", f"decider {last.tool} failed ({error_class}): {(last.error or '')[:300]}"
            )
            return [ask_human_to_decide(self._emit, state, step, missing, self._context(state), None, causation_id)]
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
            if not isinstance(step, SucceedStep | FailStep):
                # Ending a run is always allowed; starting anything else must fit the policy's caps.
                blocked = blocked_by_cap(self._emit, state, self._policy, f"step {step.id}", step.id, causation_id)
                if blocked is not None:
                    return [*out, blocked]
            match step:
                case ToolStep():
                    return [*out, self._enter_tool(state, workflow, step, why, causation_id)]
                case DecideStep():
                    return [*out, self._schedule_decider(state, step, 1, why, causation_id, None)]
                case ApprovalStep():
                    return [*out, self._enter_approval(state, workflow, step, why, causation_id)]
                case HumanStep():
                    ctx = self._context(state)
                    try:
                        prompt = str(render(step.prompt, ctx))
                    except RunDataError as exc:
                        return [*out, self._fail(state, f"prompt of {step.id}: {exc}", None, step.id)]
                    return [*out, ask_human(self._emit, state, step, prompt, ctx, why, causation_id)]
                case WaitStep():
                    try:
                        due = resolve_wait(step, self._context(state), self._clock())
                    except RunDataError as exc:
                        return [*out, self._fail(state, f"wait {step.id}: {exc}", None, step.id)]
                    return [*out, start_wait(self._emit, state, step, due, why, causation_id)]
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
        return [
            *out,
            self._fail(state, f"more than {MAX_ROUTING_HOPS} routing hops without running a step", None),
        ]

    def _follow(
        self,
        state: RunState,
        workflow: Workflow,
        events: list[Message],
        route: RouteDecided,
        output: dict[str, JsonValue] | None = None,
    ) -> list[Message]:
        """Store `events` and a route, then enter the route's target (or end the run when it has none)."""
        routed: RunState | None = state
        for event in [*events, route]:
            assert routed is not None
            routed = apply(routed, routed.last_seq + 1, event)
        assert routed is not None
        cause = route.causation_id
        if route.body.to_step is None:
            why = f"{route.body.why}; end of the workflow"
            return [*events, route, self._complete(routed, output or {}, why, cause)]
        return [*events, route, *self._enter(routed, workflow, route.body.to_step, route.body.why, cause)]

    # --- approvals ---------------------------------------------------------------------------------
    def _enter_tool(
        self, state: RunState, workflow: Workflow, step: ToolStep, why: str, causation_id: str | None
    ) -> Message:
        """Schedule a tool step, unless it is a write its policy or workflow gates and the run holds no
        approval of its exact payload: then ask for one."""
        ctx = self._context(state)
        try:
            payload = render_payload(step, ctx)
        except RunDataError as exc:
            return self._fail(state, f"input of {step.id}: {exc}", None, step.id)
        too_big = blocked_by_payload(self._emit, state, self._policy, payload, step.id, causation_id)
        if too_big is not None:
            return too_big
        gate = check_gate(state, workflow, step, payload, self._policy)
        if isinstance(gate, GateClosed):
            # The payload's own size was checked just above; what an approver would read is checked here.
            too_big = blocked_by_approval_payload(
                self._emit, state, payload, self._max_approval_payload_bytes, step.id, step.id, causation_id
            )
            if too_big is not None:
                return too_big
            return request_approval(
                self._emit,
                state,
                asking_step=step.id,
                write=step,
                payload=payload,
                role=gate.role,
                summary=f"{step.tool} ({', '.join(step.action_class) or 'write'}) needs approval: {gate.reason}",
                reason=f"{gate.reason} (after: {why})",
                expires_after_seconds=POLICY_GATE_EXPIRY_SECONDS,
                escalate_to=None,
                ctx=ctx,
                causation_id=causation_id,
            )
        return self._schedule(state, step, 1, why, causation_id, None, gate)

    def _enter_approval(
        self, state: RunState, workflow: Workflow, step: ApprovalStep, why: str, causation_id: str | None
    ) -> Message:
        write = workflow.step(step.approves)
        assert isinstance(write, ToolStep)  # the loader guarantees an approval gates a write tool step
        ctx = self._context(state)
        try:
            # The approver sees, and approves, exactly what the write will send.
            payload = render_payload(write, ctx)
            summary = str(render(step.summary, ctx)) if step.summary else f"{write.tool} with the payload shown"
        except RunDataError as exc:
            return self._fail(state, f"approval {step.id}: the payload of {write.id}: {exc}", None, step.id)
        too_big = self._approval_too_big(state, payload, step.id, write.id, causation_id)
        if too_big is not None:
            return too_big
        return request_approval(
            self._emit,
            state,
            asking_step=step.id,
            write=write,
            payload=payload,
            role=step.role,
            summary=summary,
            reason=f"{why}; approval step {step.id} gates {write.id}",
            expires_after_seconds=step.expires_after_seconds,
            escalate_to=step.escalate_to,
            ctx=ctx,
            causation_id=causation_id,
        )

    def _approval_too_big(
        self, state: RunState, payload: dict[str, JsonValue], asking_step: str, write: str, causation_id: str | None
    ) -> Message | None:
        return blocked_by_payload(self._emit, state, self._policy, payload, write, causation_id) or (
            blocked_by_approval_payload(
                self._emit, state, payload, self._max_approval_payload_bytes, asking_step, write, causation_id
            )
        )

    def _after_approval(
        self, state: RunState, workflow: Workflow, approval: Approval, causation_id: str | None
    ) -> list[Message]:
        step = workflow.step(approval.step_id)
        why = describe_decision(approval)
        if isinstance(step, ApprovalStep):
            target, defined = approval_step_target(step, approval, workflow)
            writes: dict[str, JsonValue] = {step.output_path: approval_result(approval)}
            if not defined:
                route = self._emit.route(state, step.id, "approval", None, why, causation_id, writes)
                routed = apply(state, state.last_seq + 1, route)
                assert routed is not None
                return [route, self._fail(routed, f"{why}; approval step {step.id} has no on_reject", None, step.id)]
            route = self._emit.route(state, step.id, "approval", target, why, causation_id, writes)
            return self._follow(state, workflow, [], route, approval_result(approval))
        if isinstance(step, ToolStep) and approval.status == "granted":
            # A gate the router inserted: enter the write again, which checks every role it needs.
            route = self._emit.route(state, step.id, "approval", step.id, f"{why}; {step.id} may run", causation_id)
            return self._follow(state, workflow, [], route)
        return [self._fail(state, f"{why}; the approval gate of {step.id} stays closed", None, step.id)]

    # --- deciders ----------------------------------------------------------------------------------
    def _after_decider(
        self, state: RunState, workflow: Workflow, step: DecideStep, last: Attempt, causation_id: str | None
    ) -> list[Message]:
        if last.outcome == "failed":
            return self._after_failure(state, workflow, step, last, causation_id)
        if last.outcome != "succeeded":
            return []
        outcome = settle_decision(
            self._emit,
            state,
            workflow,
            step,
            last.output or {},
            last.tool,
            self._context(state),
            self._policy,
            causation_id,
        )
        if outcome.route is None:
            return outcome.events
        return self._follow(state, workflow, outcome.events, outcome.route, outcome.output)

    def _schedule_decider(
        self,
        state: RunState,
        step: DecideStep,
        attempt: int,
        why: str,
        causation_id: str | None,
        previous: Attempt | None,
    ) -> Message:
        """Ask the decider (an executor tool, a read) for an intent among the step's declared options."""
        visit = 1 + sum(1 for a in state.attempts_of(step.id) if a.attempt == 1) - (1 if previous else 0)
        if previous is not None:
            payload, key = previous.input, previous.idempotency_key
        else:
            try:
                rendered = render(step.input, self._context(state))
            except RunDataError as exc:
                return self._fail(state, f"input of {step.id}: {exc}", None, step.id)
            payload = dict(rendered) if isinstance(rendered, dict) else {"value": rendered}
            too_big = blocked_by_payload(self._emit, state, self._policy, payload, step.id, causation_id)
            if too_big is not None:
                return too_big
            payload["options"] = decision_options(step)
            if step.min_confidence is not None:
                payload["min_confidence"] = step.min_confidence
            key = f"keel-{state.run_id}-{step.id}-{visit}"
        return StepScheduled(
            **self._env(
                state,
                f"{state.run_id}:{step.id}:{visit}:{attempt}:scheduled",
                causation_id,
                step_id=step.id,
                attempt=attempt,
            ),
            body=StepScheduledBody(
                tool=step.decider,
                input=payload,
                idempotency_key=key,
                command_id=command_id(state.run_id, step.id, visit, attempt),
                timeout_seconds=DECIDER_TIMEOUT_SECONDS,
                reason=why[:1024],
                result_path=step.output_path,
            ),
        )

    def _context(self, state: RunState) -> dict[str, Any]:
        return run_context(state)

    def _schedule(
        self,
        state: RunState,
        step: ToolStep,
        attempt: int,
        why: str,
        causation_id: str | None,
        previous: Attempt | None,
        gate: GateOpen | None = None,
    ) -> Message:
        visit = 1 + sum(1 for a in state.attempts_of(step.id) if a.attempt == 1) - (1 if previous else 0)
        approval_ids, approved_hash, grants = (
            (gate.approval_ids, gate.payload_hash, gate.grants) if gate else ((), None, ())
        )
        if previous is not None:
            # A retry sends exactly what the failed attempt sent, under the same idempotency key, so the
            # system of record can recognise it; it is the same approved write.
            payload, key = previous.input, previous.idempotency_key
            approval_ids, approved_hash, grants = previous.approval_ids, previous.approved_payload_hash, previous.grants
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
        try:
            verify = self._render_verify(state, step, payload, key, attempt)
        except RunDataError as exc:
            return self._fail(state, f"verify input of {step.id}: {exc}", None, step.id)
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
                verify=verify,
                approval_ids=list(approval_ids),
                approved_payload_hash=approved_hash,
                grants=list(grants),
            ),
        )

    def _render_verify(
        self, state: RunState, step: ToolStep, payload: dict[str, JsonValue], key: str, attempt: int
    ) -> VerifySpec | None:
        """The step's verify call for this attempt: its input sees run data plus `attempt` (the request
        this attempt sends, its idempotency key and number), rendered now so the executor needs no run data."""
        if step.verify is None:
            return None
        ctx = {**self._context(state), "attempt": {"request": payload, "idempotency_key": key, "number": attempt}}
        rendered = render(step.verify.input, ctx)
        return VerifySpec(tool=step.verify.tool, input=rendered if isinstance(rendered, dict) else {"value": rendered})

    def _complete(self, state: RunState, output: dict[str, JsonValue], why: str, causation_id: str | None) -> Message:
        return self._emit.complete(state, output, why, causation_id)

    def _fail(self, state: RunState, why: str, error_class: ErrorClass | None, step_id: str | None = None) -> Message:
        return self._emit.fail(state, why, error_class, step_id)

    # --- effects -----------------------------------------------------------------------------------
    def effects(self, state: RunState) -> list[Effect]:
        """What must have been published for the run to make progress from `state`: the timer of the
        pending retry, or the timer that ends a park (a wait, a human step's deadline). An attempt in
        flight needs nothing: its `step_scheduled` event is what the executor consumes (decision 023)."""
        out: list[Effect] = []
        pending = state.pending_retry
        if pending is not None and not state.terminal:
            timer_id = f"retry-{pending.step_id}-{pending.next_attempt}"
            body = TimerBody(purpose="retry", due_at=pending.due_at, next_attempt=pending.next_attempt)
            out.append(self._timer(state, timer_id, pending.step_id, pending.next_attempt, body))
        park = state.park
        if park is not None and park.timer_id and park.due_at is not None and not state.terminal:
            purpose = "wait" if park.kind == "wait" else "human_expiry"
            body = TimerBody(purpose=purpose, due_at=park.due_at, next_attempt=0, timer_id=park.timer_id)
            out.append(self._timer(state, park.timer_id, park.step_id, 0, body))
        return out

    def _timer(self, state: RunState, timer_id: str, step_id: str | None, attempt: int, body: TimerBody) -> Effect:
        """A durable timer: a message schedule that fires a copy of `TimerFired` at `body.due_at`."""
        fired = TimerFired(
            id=hashlib.sha256(f"{state.run_id}:{timer_id}".encode()).hexdigest()[:32],
            run_id=state.run_id,
            workflow=state.workflow,
            tenant=state.tenant,
            step_id=step_id,
            attempt=attempt,
            correlation_id=state.correlation_id,
            actor=self._actor,
            dedupe_key=f"{state.run_id}:{timer_id}",
            body=body,
        )
        return Effect(
            timers.schedule_subject(state.workflow, state.run_id, timer_id),
            fired,
            f"{state.run_id}:{timer_id}:{body.due_at.isoformat()}",
            headers={
                "Nats-Schedule": f"@at {body.due_at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
                "Nats-Schedule-Target": timers.fire_subject(state.workflow, state.run_id, timer_id),
                "Nats-Schedule-TTL": "168h",
            },
        )


def _retry_after_note(last: Attempt, planned: float) -> str:
    if last.retry_after_seconds is None or last.retry_after_seconds <= planned:
        return ""
    return f"; waiting {last.retry_after_seconds:.3f}s as the system's Retry-After asked"


def command_id(run_id: str, step_id: str, visit: int, attempt: int) -> str:
    """The dedupe key of one attempt's execute command: run, step, visit of the step, attempt."""
    return f"{run_id}.{step_id}.{visit}.{attempt}"
