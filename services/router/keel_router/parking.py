"""Steps that park a run until something outside it happens: a human's input (a human step, or a
decision the router could not accept), and a durable timer (a wait step, a human step's deadline).

Each function returns the events of one transition; the engine appends them atomically and, for a
route, goes on to enter the next step.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from keel_contracts.commands import HumanInput
from keel_contracts.envelope import Message
from keel_contracts.events import (
    HumanInputReceived,
    HumanInputReceivedBody,
    HumanInputRejected,
    HumanInputRejectedBody,
    HumanInputRequested,
    HumanInputRequestedBody,
    RouteDecided,
    WaitStarted,
    WaitStartedBody,
)
from keel_router.aggregate import RunState
from keel_router.emit import Emitter, shown_context
from keel_router.workflow.models import DecideStep, HumanStep, WaitStep, Workflow
from keel_router.workflow.policy import Policy
from keel_router.workflow.runtime import DecisionAccepted, DecisionNeedsHuman, check_decision, check_human_input

#: The queue a decision the router could not accept lands in.
DECISIONS_QUEUE = "decisions"


def decision_schema(step: DecideStep) -> dict[str, JsonValue]:
    """What a person must submit to settle a decide step: one declared intent and its payload."""
    variants: list[JsonValue] = [
        {
            "type": "object",
            "required": ["intent", "payload"],
            "properties": {"intent": {"const": o.intent}, "payload": o.payload_schema},
        }
        for o in step.options
    ]
    return {"type": "object", "required": ["intent"], "oneOf": variants}


def decision_options(step: DecideStep) -> list[JsonValue]:
    """The declared options as the decider sees them (the router adds them to its input)."""
    return [
        {"intent": o.intent, "description": o.description or "", "payload_schema": o.payload_schema}
        for o in step.options
    ]


def read_decision(output: dict[str, JsonValue]) -> tuple[str | None, Any, float | None, bool]:
    """(intent, payload, confidence, unsure) from a decider's output; anything malformed reads as unsure."""
    intent = output.get("intent")
    confidence = output.get("confidence")
    unsure = output.get("unsure") is True
    if not isinstance(intent, str):
        intent, unsure = None, True
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        confidence = None
    return intent, output.get("payload", {}), confidence, unsure


# --- human --------------------------------------------------------------------------------------------
def ask_human(
    em: Emitter,
    state: RunState,
    step: HumanStep,
    prompt: str,
    ctx: dict[str, Any],
    why: str,
    causation_id: str | None,
) -> Message:
    expires = (
        em.clock() + timedelta(seconds=step.expires_after_seconds) if step.expires_after_seconds is not None else None
    )
    return HumanInputRequested(
        **em.env(state, f"{state.run_id}:{step.id}:{state.last_seq}:human", causation_id, step_id=step.id),
        body=HumanInputRequestedBody(
            kind="human",
            queue=step.queue,
            prompt=prompt[:8192],
            reason=f"{why}; waiting for input from queue {step.queue}"[:1024],
            input_schema=step.input_schema,
            context=shown_context(ctx),
            expires_at=expires,
        ),
    )


def ask_human_to_decide(
    em: Emitter,
    state: RunState,
    step: DecideStep,
    missing: DecisionNeedsHuman,
    ctx: dict[str, Any],
    decider_output: dict[str, JsonValue] | None,
    causation_id: str | None,
) -> Message:
    declared = ", ".join(o.intent for o in step.options)
    context = {**shown_context(ctx), "decider_output": decider_output}
    return HumanInputRequested(
        **em.env(state, f"{state.run_id}:{step.id}:{state.last_seq}:decide-human", causation_id, step_id=step.id),
        body=HumanInputRequestedBody(
            kind="decide",
            queue=DECISIONS_QUEUE,
            prompt=(
                f"The decider of step {step.id} could not settle it ({missing.reason}). "
                f"Choose one intent ({declared}) and give its payload."
            )[:8192],
            missing=missing.missing,
            reason=f"decide {step.id}: missing {missing.missing}: {missing.reason}"[:1024],
            input_schema=decision_schema(step),
            context=context,
        ),
    )


@dataclass(frozen=True)
class InputOutcome:
    """What human input leads to: the events to store and, when accepted, the route to follow."""

    events: list[Message]
    route: RouteDecided | None = None
    #: For a route to nowhere (the step was the last): the run's output.
    output: dict[str, JsonValue] | None = None


def take_input(em: Emitter, state: RunState, workflow: Workflow, cmd: HumanInput, policy: Policy) -> InputOutcome:
    """Validate input against the step the run waits on: refused (the run stays parked) or accepted."""
    park = state.park

    def refuse(*problems: str) -> InputOutcome:
        return InputOutcome(
            [
                HumanInputRejected(
                    **em.env(state, f"{state.run_id}:input:{cmd.id}", cmd.id, step_id=park.step_id if park else None),
                    body=HumanInputRejectedBody(
                        problems=[p[:1024] for p in problems[:20]],
                        submitted_by=cmd.body.submitted_by,
                        command_id=cmd.id,
                    ),
                )
            ]
        )

    if state.terminal or park is None or park.kind not in ("human", "decide") or park.step_id is None:
        return refuse(f"run {state.run_id} is not waiting for human input (status {state.status}: {state.reason})")
    if cmd.body.step_id is not None and cmd.body.step_id != park.step_id:
        return refuse(f"run {state.run_id} waits for input to step {park.step_id}, not {cmd.body.step_id}")
    step = workflow.step(park.step_id)
    data = dict(cmd.body.input)
    who = cmd.body.submitted_by
    received = HumanInputReceived(
        **em.env(state, f"{state.run_id}:input:{cmd.id}", cmd.id, step_id=step.id),
        body=HumanInputReceivedBody(input=data, submitted_by=who, command_id=cmd.id),
    )
    if isinstance(step, HumanStep):
        problems = check_human_input(step, data, policy)
        if problems:
            return refuse(*map(str, problems))
        nxt = workflow.next_of(step)
        why = f"input from {who} accepted for human step {step.id}"
        route = em.route(state, step.id, "human", nxt, why, cmd.id, {step.output_path: data})
        return InputOutcome([received], route, data if nxt is None else None)
    if isinstance(step, DecideStep):
        # A person's answer is taken as certain: the decide step's min_confidence is about the decider.
        decision = check_decision(
            workflow,
            step,
            intent=_str(data.get("intent")),
            payload=data.get("payload", {}),
            confidence=1.0,
            policy=policy,
        )
        if isinstance(decision, DecisionNeedsHuman):
            return refuse(f"{decision.missing}: {decision.reason}")
        return InputOutcome([received], *_accept(em, state, step, decision, f"{who} chose", cmd.id))
    return refuse(f"step {step.id} is a {step.kind} step and takes no human input")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _accept(
    em: Emitter, state: RunState, step: DecideStep, decision: DecisionAccepted, by: str, causation_id: str | None
) -> tuple[RouteDecided, dict[str, JsonValue] | None]:
    index = next(i for i, o in enumerate(step.options) if o.intent == decision.intent)
    confidence = decision.result.get("confidence")
    shown = f" (confidence {confidence:g})" if isinstance(confidence, int | float) else ""
    why = (
        f"decide {step.id}: {by} intent '{decision.intent}'{shown}; the payload satisfies "
        f"options[{index}].payload_schema; next {decision.next_step or '(end of the workflow)'}"
    )
    result: dict[str, JsonValue] = dict(decision.result)
    route = em.route(state, step.id, "decide", decision.next_step, why, causation_id, {step.output_path: result})
    return route, result if decision.next_step is None else None


def settle_decision(
    em: Emitter,
    state: RunState,
    workflow: Workflow,
    step: DecideStep,
    output: dict[str, JsonValue],
    decider: str,
    ctx: dict[str, Any],
    policy: Policy,
    causation_id: str | None,
) -> InputOutcome:
    """A decider answered: accept a declared intent with a valid payload, or hand the decision to a person."""
    intent, payload, confidence, unsure = read_decision(output)
    decision = check_decision(
        workflow, step, intent=intent, payload=payload, confidence=confidence, unsure=unsure, policy=policy
    )
    if isinstance(decision, DecisionNeedsHuman):
        return InputOutcome([ask_human_to_decide(em, state, step, decision, ctx, output, causation_id)])
    return InputOutcome([], *_accept(em, state, step, decision, f"{decider} chose", causation_id))


# --- wait ---------------------------------------------------------------------------------------------
def start_wait(em: Emitter, state: RunState, step: WaitStep, due: Any, why: str, causation_id: str | None) -> Message:
    timer_id = f"wait-{step.id}-{state.last_seq + 1}"
    return WaitStarted(
        **em.env(state, f"{state.run_id}:{timer_id}", causation_id, step_id=step.id),
        body=WaitStartedBody(
            due_at=due, timer_id=timer_id, reason=f"{why}; waiting until {due.isoformat()} ({step.id})"[:1024]
        ),
    )
