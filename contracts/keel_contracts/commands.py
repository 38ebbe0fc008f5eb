"""Commands: requests for one service to do one thing, carried on KEEL_COMMANDS (WorkQueue).

Every command's `dedupe_key` is sent as `Nats-Msg-Id`, and the consuming service claims the same key
before any side effect, so a command redelivered or published twice does its work once.
"""

import hashlib
from typing import Annotated, Literal

from pydantic import Field, JsonValue

from keel_contracts.approvals import DecisionProof
from keel_contracts.envelope import Body, KeyText, Message, Token


class TriggerRunBody(Body):
    intent_key: KeyText
    source: Token
    input: dict[str, JsonValue]


class TriggerRun(Message):
    """Start a run of `workflow` for an intent, or join the run that intent already has.

    `run_id` must equal `run_id_for(tenant, workflow, intent_key)`; the router checks it, so a caller
    can know the run id before the router answers.
    """

    type: Literal["trigger_run"] = "trigger_run"
    body: TriggerRunBody


class VerifySpec(Body):
    """The read-back that tells whether a write with an unknown outcome landed: a tool and its input,
    rendered by the router when it schedules the attempt (so the executor needs no run data)."""

    tool: Annotated[str, Field(min_length=1, max_length=128)]
    input: dict[str, JsonValue]


class ExecuteStepBody(Body):
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    input: dict[str, JsonValue]
    idempotency_key: KeyText
    timeout_seconds: Annotated[float, Field(gt=0)]
    side_effect: Literal["read", "write"] = "read"
    # Set when an approval gates this write: the executor refuses to run it unless the payload it is
    # about to send hashes to exactly what was approved.
    approval_id: Annotated[str, Field(max_length=512)] | None = None
    approved_payload_hash: Annotated[str, Field(max_length=80)] | None = None
    # The approval service's signed grants of this write; the executor verifies them before it writes.
    approval_ids: Annotated[list[KeyText], Field(max_length=8)] = Field(default_factory=list)
    grants: Annotated[list[DecisionProof], Field(max_length=8)] = Field(default_factory=list)
    # Run by the executor after an unknown outcome, before it would ever send the write again.
    verify: VerifySpec | None = None


class ExecuteStep(Message):
    """One attempt of one tool step, as the executor runs it. Not published: the executor reads it from
    the router's `step_scheduled` event (`keel_contracts.attempts.execute_step_for`, decision 023).
    `dedupe_key` names the attempt (run, step, visit, attempt) and is what the executor claims."""

    type: Literal["execute_step"] = "execute_step"
    body: ExecuteStepBody


def execute_message_id(command_id: str) -> str:
    """The id of one attempt's `ExecuteStep`. Deterministic, so an outcome (whose causation_id is this
    id) names exactly its attempt however often the attempt is read."""
    return hashlib.sha256(command_id.encode()).hexdigest()[:32]


class HumanInputBody(Body):
    input: dict[str, JsonValue]
    # Who answers: an operator identity (the CLI sends the local user unless told otherwise).
    submitted_by: Annotated[str, Field(min_length=1, max_length=256)]
    # The step the person believes they answer; input for a step the run no longer waits on is refused.
    step_id: Token | None = None


class HumanInput(Message):
    """Input for a run parked in `needs_human` (`keel run input`). The router validates it against the
    step's schema; invalid input is refused with a `human_input_rejected` event and the run stays parked."""

    type: Literal["human_input"] = "human_input"
    body: HumanInputBody


class CancelRunBody(Body):
    reason: Annotated[str, Field(max_length=1024)] = "cancelled by an operator"
    requested_by: Annotated[str, Field(min_length=1, max_length=256)]


class CancelRun(Message):
    """Cancel a run (`keel run cancel`): no new step or write starts; a write already sent finishes."""

    type: Literal["cancel_run"] = "cancel_run"
    body: CancelRunBody


RouterCommand = Annotated[HumanInput | CancelRun, Field(discriminator="type")]
