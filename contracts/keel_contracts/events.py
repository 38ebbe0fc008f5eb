"""Run events: the immutable facts a run is made of, stored in KEEL_EVENTS.

The run's state is a fold of these events; nothing else is authoritative.
"""

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue

from keel_contracts.approvals import ApprovalDenied, ApprovalExpired, ApprovalGranted, ApprovalRequested
from keel_contracts.envelope import Body, KeyText, Message, ShortText, Token
from keel_contracts.errors import ErrorClass


class RunStartedBody(Body):
    intent_key: KeyText
    source: Token
    trigger_id: KeyText
    input: dict[str, JsonValue]
    workflow_version: Annotated[int, Field(ge=0)] = 0


class RunStarted(Message):
    """The first event of every run: the trigger that started it, with its input."""

    type: Literal["run_started"] = "run_started"
    body: RunStartedBody


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


class StepScheduled(Message):
    """The router decided to run a tool step; the matching execute command carries `command_id`."""

    type: Literal["step_scheduled"] = "step_scheduled"
    body: StepScheduledBody


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
    kind: Literal["choice", "catch"]
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
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | ApprovalExpired,
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
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        ApprovalExpired,
    )
}

#: Events after which a run's status is known without folding it: what `keel trigger --wait` stops on.
FINAL_STATUS_OF_EVENT: dict[str, str] = {"run_completed": "done", "run_failed": "failed"}
