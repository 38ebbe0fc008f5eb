"""Run events: the immutable facts a run is made of, stored in KEEL_EVENTS.

The run's state is a fold of these events; nothing else is authoritative.
"""

import json
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue

from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalWithdrawn,
    DecisionProof,
)
from keel_contracts.commands import VerifySpec
from keel_contracts.envelope import Body, KeyText, Message, ShortText, Token
from keel_contracts.errors import ErrorClass


class TriggerJoinedBody(Body):
    intent_key: KeyText
    source: Token
    trigger_id: KeyText


class TriggerJoined(Message):
    """A later trigger with the same intent key joined the existing run instead of starting another."""

    type: Literal["trigger_joined"] = "trigger_joined"
    body: TriggerJoinedBody


class StepScheduledBody(Body):
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    input: dict[str, JsonValue]
    idempotency_key: KeyText
    command_id: KeyText
    timeout_seconds: Annotated[float, Field(gt=0)]
    reason: ShortText
    # Where the step's output goes in run data (default steps.<step id>).
    result_path: Annotated[str, Field(max_length=256)] | None = None
    side_effect: Literal["read", "write"] = "read"
    # For a gated write: the approvals this attempt consumes and the payload hash they approved. The
    # execute command carries the hash, so the executor refuses any other payload.
    approval_ids: Annotated[list[KeyText], Field(max_length=8)] = Field(default_factory=list)
    approved_payload_hash: Annotated[str, Field(max_length=80)] | None = None
    # The signed grants behind `approval_ids`: the executor verifies them against the approval service's
    # keyring before it writes (decision 026).
    grants: Annotated[list[DecisionProof], Field(max_length=8)] = Field(default_factory=list)
    # The step's verify call rendered for this attempt (request, idempotency key, number filled in).
    verify: VerifySpec | None = None
    # For a write: the router's Ed25519 signature over `StepScheduled.statement`, so an executor sends a
    # write only when the router scheduled it, whoever could publish under the router's token (decision 026).
    key_id: Annotated[str, Field(max_length=64)] | None = None
    signature: Annotated[str, Field(max_length=128)] | None = None


#: Labels what a schedule signature means, so no other signed Keel document can pass for one.
SCHEDULE_STATEMENT = "keel-write-schedule/v1"


class StepScheduled(Message):
    """The router decided to run an attempt of a tool step: the executors consume this event (decision 023);
    `command_id` names the attempt (what the executor claims, and what its outcome answers)."""

    type: Literal["step_scheduled"] = "step_scheduled"
    body: StepScheduledBody

    def statement(self) -> bytes:
        """What the router signs for a write: the attempt (run, step, number) and everything the executor
        acts on, canonical JSON, without the signature itself."""
        doc = {
            "statement": SCHEDULE_STATEMENT,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "tenant": self.tenant,
            "step_id": self.step_id,
            "attempt": self.attempt,
            "body": self.body.model_dump(mode="json", exclude={"signature"}),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class RunStartedBody(Body):
    intent_key: KeyText
    source: Token
    trigger_id: KeyText
    input: dict[str, JsonValue]
    workflow_version: Annotated[int, Field(ge=0)] = 0
    # Who asked for the run (the trigger's actor): the requester of its approvals, who may not approve them.
    triggered_by: Annotated[str, Field(max_length=256)] = ""
    # The run's first attempt when its first step is a tool step, stored in the same message so a run
    # starts with one acknowledged write, not two (decision 025): executors consume `run_started` too.
    first_step: StepScheduled | None = None


class RunStarted(Message):
    """The first event of every run: the trigger that started it, with its input, and (version 2) the
    attempt of its first step when that is a tool step.

    Version 2 because a version-1 reader would ignore `first_step` and never run that attempt: it must
    refuse the event rather than misread it."""

    type: Literal["run_started"] = "run_started"
    version: Annotated[int, Field(ge=1)] = 2
    body: RunStartedBody

    def with_first_step(self, step: StepScheduled | None) -> "RunStarted":
        """The same start carrying `step` as its first step (None: carrying none)."""
        return self.model_copy(update={"body": self.body.model_copy(update={"first_step": step})})


def scheduled_step(event: Message) -> StepScheduled | None:
    """The attempt an event asks an executor to run: a `step_scheduled`, or the first step a
    `run_started` carries."""
    if isinstance(event, StepScheduled):
        return event
    if isinstance(event, RunStarted):
        return event.body.first_step
    return None


def unpacked(event: Message) -> tuple[Message, ...]:
    """The facts one stored event holds, in order: a `run_started` with its first step is the start and
    then that step's `step_scheduled` (same stream sequence); every other event is itself."""
    if isinstance(event, RunStarted) and event.body.first_step is not None:
        return (event, event.body.first_step)
    return (event,)


class StepSucceededBody(Body):
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    output: dict[str, JsonValue]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    executor_id: Annotated[str, Field(max_length=128)]


class StepSucceeded(Message):
    type: Literal["step_succeeded"] = "step_succeeded"
    body: StepSucceededBody


class StepFailedBody(Body):
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    error_class: ErrorClass
    error_type: Annotated[str, Field(max_length=256)]
    message: Annotated[str, Field(max_length=4096)]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    executor_id: Annotated[str, Field(max_length=128)]
    # The system of record's own "not before" (HTTP Retry-After): a retry never comes sooner.
    retry_after_seconds: Annotated[float, Field(ge=0)] | None = None


class StepFailed(Message):
    type: Literal["step_failed"] = "step_failed"
    body: StepFailedBody


class RetryScheduledBody(Body):
    next_attempt: Annotated[int, Field(ge=2)]
    retrier_index: Annotated[int, Field(ge=0)]
    error_class: ErrorClass
    delay_seconds: Annotated[float, Field(ge=0)]
    due_at: AwareDatetime
    reason: ShortText


class RetryScheduled(Message):
    """A failed attempt will be retried at `due_at` (a durable timer fires then)."""

    type: Literal["retry_scheduled"] = "retry_scheduled"
    body: RetryScheduledBody


class RouteDecidedBody(Body):
    # choice: a rule matched; catch: a catcher took an error; decide: a decider's intent was accepted;
    # approval: a gate was decided (granted, denied, expired); human: a human's input was accepted or
    # the wait for it expired; wait: a wait step's timer fired.
    kind: Literal["choice", "catch", "decide", "approval", "human", "wait"]
    to_step: Token | None
    why: Annotated[str, Field(max_length=4096)]
    # Run data the decision stores, by result path: for a catch, the error (default errors.<step>)
    # and, when the catcher declares one, the fallback result at the step's result path.
    writes: dict[str, JsonValue] = Field(default_factory=dict)


class RouteDecided(Message):
    """A routing decision that is not simply 'the next step': a choice rule matched, or a catcher took
    an error to a fallback step. `why` records the rule and the values it saw."""

    type: Literal["route_decided"] = "route_decided"
    body: RouteDecidedBody


class RunCompletedBody(Body):
    output: dict[str, JsonValue]
    reason: ShortText


class RunCompleted(Message):
    type: Literal["run_completed"] = "run_completed"
    body: RunCompletedBody


class RunFailedBody(Body):
    reason: ShortText
    error_class: ErrorClass | None = None
    failed_step: Token | None = None


class RunFailed(Message):
    type: Literal["run_failed"] = "run_failed"
    body: RunFailedBody


class HumanInputRequestedBody(Body):
    # human: a human step; decide: a decision the router could not accept (unsure, undeclared intent,
    # invalid payload), handed to a person.
    kind: Literal["human", "decide"]
    queue: Token
    prompt: Annotated[str, Field(max_length=8192)]
    # The piece the router is missing (e.g. `intent`, `payload.title`), when one is.
    missing: Annotated[str, Field(max_length=512)] | None = None
    reason: ShortText
    input_schema: dict[str, JsonValue]
    # What the person needs to decide: the run data the step can see (omitted when too large).
    context: dict[str, JsonValue] = Field(default_factory=dict)
    expires_at: AwareDatetime | None = None


class HumanInputRequested(Message):
    """The run parks in `needs_human` until input for this step arrives (`keel run input`)."""

    type: Literal["human_input_requested"] = "human_input_requested"
    body: HumanInputRequestedBody


class HumanInputReceivedBody(Body):
    input: dict[str, JsonValue]
    submitted_by: Annotated[str, Field(min_length=1, max_length=256)]
    command_id: Annotated[str, Field(max_length=128)]


class HumanInputReceived(Message):
    """A person's input was accepted for the step the run waited on; a route_decided follows."""

    type: Literal["human_input_received"] = "human_input_received"
    body: HumanInputReceivedBody


class HumanInputRejectedBody(Body):
    problems: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=20)]
    submitted_by: Annotated[str, Field(min_length=1, max_length=256)]
    command_id: Annotated[str, Field(max_length=128)]


class HumanInputRejected(Message):
    """Input was refused (invalid, or the run was not waiting for it); the run stays where it was."""

    type: Literal["human_input_rejected"] = "human_input_rejected"
    body: HumanInputRejectedBody


class WaitStartedBody(Body):
    due_at: AwareDatetime
    timer_id: Token
    reason: ShortText


class WaitStarted(Message):
    """A wait step parked the run in `waiting` until a durable timer fires at `due_at`."""

    type: Literal["wait_started"] = "wait_started"
    body: WaitStartedBody


class RunBlockedBody(Body):
    cap: Annotated[str, Field(max_length=64)]
    limit: float
    value: float
    reason: ShortText


class RunBlocked(Message):
    """A policy cap stopped the run before it could start another step or attempt."""

    type: Literal["run_blocked"] = "run_blocked"
    body: RunBlockedBody


class RunCancelledBody(Body):
    reason: ShortText
    requested_by: Annotated[str, Field(min_length=1, max_length=256)]
    # A write already sent when the cancel arrived: it finishes and its outcome is recorded, but nothing
    # follows it.
    in_flight_step: Token | None = None


class RunCancelled(Message):
    type: Literal["run_cancelled"] = "run_cancelled"
    body: RunCancelledBody


RunEvent = Annotated[
    RunStarted
    | TriggerJoined
    | StepScheduled
    | StepSucceeded
    | StepFailed
    | RetryScheduled
    | RouteDecided
    | RunCompleted
    | RunFailed
    | HumanInputRequested
    | HumanInputReceived
    | HumanInputRejected
    | WaitStarted
    | RunBlocked
    | RunCancelled
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | ApprovalExpired
    | ApprovalWithdrawn,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Message]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RunStarted,
        TriggerJoined,
        StepScheduled,
        StepSucceeded,
        StepFailed,
        RetryScheduled,
        RouteDecided,
        RunCompleted,
        RunFailed,
        HumanInputRequested,
        HumanInputReceived,
        HumanInputRejected,
        WaitStarted,
        RunBlocked,
        RunCancelled,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        ApprovalExpired,
        ApprovalWithdrawn,
    )
}

#: Events after which a run's status is known without folding it: what `keel trigger --wait` stops on.
FINAL_STATUS_OF_EVENT: dict[str, str] = {"run_completed": "done", "run_failed": "failed", "run_cancelled": "cancelled"}
