"""Commands: requests for one service to do one thing, carried on KEEL_COMMANDS (WorkQueue).

Every command's `dedupe_key` is sent as `Nats-Msg-Id`, and the consuming service claims the same key
before any side effect, so a command redelivered or published twice does its work once.
"""

import hashlib
from typing import Annotated, Literal

from pydantic import Field, JsonValue

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


class ExecuteStep(Message):
    """Run one attempt of one tool step. `dedupe_key` names the attempt (run, step, attempt)."""

    type: Literal["execute_step"] = "execute_step"
    body: ExecuteStepBody


def execute_message_id(command_id: str) -> str:
    """The message id of the execute command for one attempt. Deterministic, so a re-published command
    is the same message, and an outcome (whose causation_id is this id) names exactly its attempt."""
    return hashlib.sha256(command_id.encode()).hexdigest()[:32]
