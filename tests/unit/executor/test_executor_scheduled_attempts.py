"""Attempts read from `step_scheduled` events (decision 023): reads without claims on their first
delivery, no write after a cancellation, outcomes checked to follow their schedule directly."""

from __future__ import annotations

from collections.abc import Callable

from executor_testkit import MemoryClaims, MemoryOutcomes, ToolCalls

from keel_contracts.attempts import execute_step_for
from keel_contracts.commands import ExecuteStep, VerifySpec, execute_message_id
from keel_contracts.events import StepScheduled, StepScheduledBody, StepSucceeded
from keel_executor.claims import ClaimState
from keel_executor.execution import Executor, outcome_key

MakeCommand = Callable[..., ExecuteStep]


async def test_a_read_on_its_first_delivery_runs_without_a_claim(
    executor: Executor, make_command: MakeCommand, claims: MemoryClaims, outcomes: MemoryOutcomes, calls: ToolCalls
):
    cmd = make_command()

    result = await executor.execute(cmd, scheduled_seq=outcomes.next_seq, first_delivery=True)

    assert isinstance(result.outcome, StepSucceeded)
    assert result.claim_state is None
    assert claims.state_of(cmd.dedupe_key) is None
    assert len(calls.calls) == 1


async def test_a_redelivered_read_whose_outcome_is_stored_reports_it_and_does_not_run_again(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes, calls: ToolCalls
):
    cmd = make_command()
    first = await executor.execute(cmd, scheduled_seq=outcomes.next_seq, first_delivery=True)

    # Its ack was lost: the same attempt comes back.
    again = await executor.execute(cmd, scheduled_seq=41, first_delivery=False)

    assert again.outcome is None
    assert again.outcome_seq == first.outcome_seq
    assert again.claim_state is ClaimState.NEW  # the first delivery took no claim, yet nothing runs twice
    assert len(calls.calls) == 1
    assert len(outcomes.events) == 1


async def test_a_redelivered_read_that_never_finished_runs_again(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes, calls: ToolCalls
):
    result = await executor.execute(make_command(), scheduled_seq=outcomes.next_seq, first_delivery=False)

    assert isinstance(result.outcome, StepSucceeded)
    assert len(calls.calls) == 1


async def test_a_write_always_takes_its_claim_even_on_its_first_delivery(
    executor: Executor, make_command: MakeCommand, claims: MemoryClaims, outcomes: MemoryOutcomes
):
    cmd = make_command(side_effect="write")

    result = await executor.execute(cmd, scheduled_seq=outcomes.next_seq, first_delivery=True)

    assert result.claim_state is ClaimState.NEW
    assert claims.state_of(cmd.dedupe_key) == "running"


async def test_a_write_of_a_run_cancelled_after_it_was_scheduled_is_never_sent(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes, calls: ToolCalls
):
    scheduled = outcomes.next_seq
    outcomes.cancel()

    result = await executor.execute(make_command(side_effect="write"), scheduled_seq=scheduled, first_delivery=True)

    assert result.outcome is None and result.outcome_seq is None
    assert calls.calls == []
    assert outcomes.events == []


async def test_a_cancellation_stored_before_the_schedule_does_not_stop_the_write(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes, calls: ToolCalls
):
    # Only a cancellation after the attempt was scheduled can concern it (the router schedules nothing
    # on a cancelled run); the check reads from the schedule's sequence on.
    outcomes.cancel()
    scheduled = outcomes.next_seq

    result = await executor.execute(make_command(side_effect="write"), scheduled_seq=scheduled, first_delivery=True)

    assert isinstance(result.outcome, StepSucceeded)
    assert len(calls.calls) == 1


async def test_an_outcome_is_checked_to_follow_its_schedule_when_nothing_came_between(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes
):
    cmd = make_command()
    scheduled = outcomes.next_seq

    await executor.execute(cmd, scheduled_seq=scheduled, first_delivery=True)

    assert outcomes.checked_follows[outcome_key(cmd)] == scheduled


async def test_an_outcome_after_something_else_on_the_run_is_stored_without_the_check(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes
):
    cmd = make_command()
    scheduled = outcomes.next_seq
    outcomes.next_seq += 1  # say, a timer's event stored on the run meanwhile

    result = await executor.execute(cmd, scheduled_seq=scheduled, first_delivery=True)

    assert isinstance(result.outcome, StepSucceeded)  # the outcome stands all the same
    assert outcomes.checked_follows[outcome_key(cmd)] is None


def test_the_attempt_of_a_step_scheduled_event_carries_everything_the_executor_needs():
    verify = VerifySpec(tool="crm.find", input={"key": "k-1"})
    event = StepScheduled(
        run_id="r-1",
        workflow="orders",
        tenant="acme",
        step_id="charge",
        attempt=2,
        correlation_id="c-1",
        actor="router",
        dedupe_key="r-1:charge:1:2:scheduled",
        body=StepScheduledBody(
            tool="billing.charge",
            input={"amount": 5},
            idempotency_key="idem-1",
            command_id="r-1:charge:1:2",
            timeout_seconds=12.5,
            reason="next step",
            side_effect="write",
            approval_ids=["ap-1", "ap-2"],
            approved_payload_hash="sha256:abc",
            verify=verify,
        ),
    )

    cmd = execute_step_for(event)

    assert cmd == execute_step_for(event)  # deterministic: every delivery is the same attempt
    assert ExecuteStep.model_validate_json(cmd.model_dump_json()) == cmd  # a valid attempt, though not re-checked
    assert (cmd.run_id, cmd.workflow, cmd.tenant, cmd.step_id, cmd.attempt) == ("r-1", "orders", "acme", "charge", 2)
    assert cmd.dedupe_key == "r-1:charge:1:2"
    assert cmd.id == execute_message_id("r-1:charge:1:2")
    assert (cmd.correlation_id, cmd.causation_id, cmd.occurred_at) == ("c-1", event.id, event.occurred_at)
    body = cmd.body
    assert (body.tool, body.input, body.idempotency_key, body.timeout_seconds) == (
        "billing.charge",
        {"amount": 5},
        "idem-1",
        12.5,
    )
    assert (body.side_effect, body.verify, body.approval_id, body.approved_payload_hash) == (
        "write",
        verify,
        "ap-1",
        "sha256:abc",
    )
