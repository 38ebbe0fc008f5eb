"""The attempt an executor runs, read from the `step_scheduled` event that decided it.

The router records a tool step's attempt once, as a `step_scheduled` event, and the executor consumes
those events directly (decision 023): there is no separate execute command to publish, to lose between
storing the decision and sending it, or to purge. `ExecuteStep` is the executor's view of that event.
"""

from keel_contracts.commands import ExecuteStep, ExecuteStepBody, execute_message_id
from keel_contracts.events import StepScheduled


def execute_step_for(event: StepScheduled) -> ExecuteStep:
    """The attempt a `step_scheduled` event asks for. Deterministic: the same event always gives the
    same attempt, whose `dedupe_key` (the event's `command_id`) is what the executor claims, and whose
    `id` every outcome names as its `causation_id`."""
    body = event.body
    # Built without validating again: every field comes from the event, which was validated against the
    # same constraints when it was decoded (re-validating the step's input costs more than running a
    # no-op tool).
    return ExecuteStep.model_construct(
        id=execute_message_id(body.command_id),
        run_id=event.run_id,
        workflow=event.workflow,
        tenant=event.tenant,
        step_id=event.step_id,
        attempt=event.attempt,
        correlation_id=event.correlation_id,
        causation_id=event.id,
        actor=event.actor,
        dedupe_key=body.command_id,
        occurred_at=event.occurred_at,
        body=ExecuteStepBody.model_construct(
            tool=body.tool,
            input=body.input,
            idempotency_key=body.idempotency_key,
            timeout_seconds=body.timeout_seconds,
            side_effect=body.side_effect,
            verify=body.verify,
            approval_id=body.approval_ids[0] if body.approval_ids else None,
            approved_payload_hash=body.approved_payload_hash,
            approval_ids=body.approval_ids,
            grants=body.grants,
        ),
    )
