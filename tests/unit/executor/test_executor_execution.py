"""One attempt of one step: claim, call the tool, record the outcome, complete the claim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from executor_testkit import T0, MemoryClaims, MemoryOutcomes, ToolCalls

from keel_contracts.approvals import DecisionProof, payload_hash
from keel_contracts.commands import ExecuteStep
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepSucceeded, StepSucceededBody
from keel_executor import errors
from keel_executor.claims import ClaimState
from keel_executor.execution import Executor, outcome_key
from keel_executor.tools.registry import ToolRegistry
from keel_shared.signing import Signer
from tests.conftest import signed_grant

MakeCommand = Callable[..., ExecuteStep]


async def test_success_records_step_succeeded_under_the_outcome_dedupe_key(
    executor: Executor, make_command: MakeCommand, claims: MemoryClaims, outcomes: MemoryOutcomes, calls: ToolCalls
):
    cmd = make_command(input={"amount": 5})

    result = await executor.execute(cmd)

    assert result.claim_state is ClaimState.NEW
    outcome = result.outcome
    assert isinstance(outcome, StepSucceeded)
    assert outcome.body.output == {"echo": {"amount": 5}, "step": "charge"}
    assert outcome.body.tool == "test.echo"
    assert outcome.body.executor_id == "ex-1"
    assert (outcome.body.started_at, outcome.body.finished_at) == (T0, T0)
    # The outcome names the attempt it reports and the command that caused it.
    assert (outcome.run_id, outcome.workflow, outcome.tenant) == ("r-1", "orders", "acme")
    assert (outcome.step_id, outcome.attempt) == ("charge", 1)
    assert outcome.causation_id == cmd.id
    assert outcome.correlation_id == cmd.correlation_id
    assert outcome.dedupe_key == outcome_key(cmd) == f"{cmd.dedupe_key}:outcome"
    assert outcome.actor == "executor:ex-1"
    assert outcomes.events == [outcome]
    assert result.outcome_seq == 42
    # The outcome is the record of completion: the claim is not written again.
    assert claims.state_of(cmd.dedupe_key) == "running"
    assert len(calls.calls) == 1
    ctx, data = calls.calls[0]
    assert data == {"amount": 5}
    assert (ctx.idempotency_key, ctx.run_id, ctx.step_id, ctx.attempt) == ("idem-1", "r-1", "charge", 1)


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [
        (errors.TransientError("503 from upstream"), ErrorClass.TRANSIENT),
        (errors.PermanentError("400 invalid amount"), ErrorClass.PERMANENT),
        (errors.AuthError("token expired"), ErrorClass.AUTH),
        (errors.BusinessRuleError("account locked"), ErrorClass.BUSINESS_RULE),
        (errors.UnknownOutcomeError("connection reset after send"), ErrorClass.UNKNOWN_OUTCOME),
        (errors.StepTimeoutError("gave up"), ErrorClass.TIMEOUT),
        (errors.RefusedError("not approved"), ErrorClass.REFUSED),
        (ConnectionResetError("reset by peer"), ErrorClass.TRANSIENT),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_a_tool_raising_a_typed_error_records_step_failed_with_that_class(
    make_executor: Callable[..., Executor],
    make_command: MakeCommand,
    claims: MemoryClaims,
    outcomes: MemoryOutcomes,
    exc: BaseException,
    error_class: ErrorClass,
):
    async def raising(ctx: object, data: object) -> dict:
        raise exc

    cmd = make_command(tool="test.raise")

    result = await make_executor(ToolRegistry({"test.raise": raising})).execute(cmd)

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is error_class
    assert outcome.body.error_type == type(exc).__name__
    assert outcome.body.message == str(exc)
    assert outcome.dedupe_key == outcome_key(cmd)
    assert outcomes.events == [outcome]


async def test_a_tool_raising_its_own_timeout_error_fails_with_class_timeout(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    async def raising(ctx: object, data: object) -> dict:
        raise TimeoutError("read timed out")

    result = await make_executor(ToolRegistry({"test.raise": raising})).execute(make_command(tool="test.raise"))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.TIMEOUT


async def test_a_tool_raising_its_own_timeout_error_keeps_its_message(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    async def raising(ctx: object, data: object) -> dict:
        raise TimeoutError("read timed out")

    result = await make_executor(ToolRegistry({"test.raise": raising})).execute(make_command(tool="test.raise"))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.message == "read timed out"
    assert result.outcome.body.error_type == "TimeoutError"


async def test_an_untyped_exception_is_a_permanent_failure_not_a_crash(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    async def buggy(ctx: object, data: dict) -> dict:
        return {"x": data["missing"]}

    result = await make_executor(ToolRegistry({"test.buggy": buggy})).execute(make_command(tool="test.buggy"))

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.PERMANENT
    assert outcome.body.error_type == "KeyError"
    assert "missing" in outcome.body.message


async def test_a_tool_that_runs_past_its_timeout_fails_with_class_timeout(
    make_executor: Callable[..., Executor], make_command: MakeCommand, claims: MemoryClaims
):
    never = asyncio.Event()

    async def hangs(ctx: object, data: object) -> dict:
        await never.wait()
        return {}

    cmd = make_command(tool="test.hangs", timeout_seconds=0.01)

    result = await make_executor(ToolRegistry({"test.hangs": hangs})).execute(cmd)

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.TIMEOUT
    assert outcome.body.error_type == "StepTimeoutError"
    assert "test.hangs did not finish within 0.01s" in outcome.body.message


@pytest.mark.parametrize("output", [["a", "list"], "text", None, 3])
async def test_a_tool_returning_anything_but_an_object_is_a_permanent_failure(
    make_executor: Callable[..., Executor], make_command: MakeCommand, output: object
):
    async def wrong(ctx: object, data: object) -> object:
        return output

    result = await make_executor(ToolRegistry({"test.wrong": wrong})).execute(make_command(tool="test.wrong"))

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.PERMANENT
    assert f"returned {type(output).__name__}, not an object" in outcome.body.message


async def test_an_unknown_tool_is_a_permanent_failure_naming_the_known_tools(
    executor: Executor, make_command: MakeCommand, claims: MemoryClaims
):
    cmd = make_command(tool="billing.refund")

    result = await executor.execute(cmd)

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.PERMANENT
    assert outcome.body.error_type == "UnknownToolError"
    assert "'billing.refund'" in outcome.body.message
    assert "test.echo" in outcome.body.message


async def test_a_redelivered_finished_command_is_not_run_again_and_records_nothing(
    executor: Executor, make_command: MakeCommand, outcomes: MemoryOutcomes, calls: ToolCalls
):
    cmd = make_command()
    await executor.execute(cmd)
    assert len(calls.calls) == 1

    again = await executor.execute(cmd)

    assert again.claim_state is ClaimState.TAKEN_OVER
    assert again.outcome is None
    assert again.outcome_seq == 42
    assert len(calls.calls) == 1
    assert len(outcomes.events) == 1


async def test_a_taken_over_claim_whose_outcome_was_recorded_completes_without_running_the_tool(
    make_executor: Callable[..., Executor],
    registry: ToolRegistry,
    make_command: MakeCommand,
    claims: MemoryClaims,
    outcomes: MemoryOutcomes,
    calls: ToolCalls,
):
    cmd = make_command()
    # A previous executor claimed the command, ran the tool and recorded the outcome, then died before
    # acking the command.
    await claims.claim(cmd.dedupe_key, "ex-dead")
    recorded = StepSucceeded(
        run_id=cmd.run_id,
        workflow=cmd.workflow,
        step_id=cmd.step_id,
        attempt=cmd.attempt,
        correlation_id=cmd.correlation_id,
        causation_id=cmd.id,
        actor="executor:ex-dead",
        dedupe_key=outcome_key(cmd),
        body=StepSucceededBody(tool="test.echo", output={}, started_at=T0, finished_at=T0, executor_id="ex-dead"),
    )
    recorded_seq = await outcomes.record(recorded)

    result = await make_executor(registry, "ex-2").execute(cmd)

    assert result.claim_state is ClaimState.TAKEN_OVER
    assert result.outcome is None
    assert result.outcome_seq == recorded_seq
    assert calls.calls == []
    assert len(outcomes.events) == 1


async def test_a_taken_over_claim_without_an_outcome_runs_the_tool_again_with_the_same_idempotency_key(
    make_executor: Callable[..., Executor],
    registry: ToolRegistry,
    make_command: MakeCommand,
    claims: MemoryClaims,
    outcomes: MemoryOutcomes,
    calls: ToolCalls,
):
    cmd = make_command(idempotency_key="refund-ch_1")
    await claims.claim(cmd.dedupe_key, "ex-dead")  # it died mid-call: no outcome recorded

    result = await make_executor(registry, "ex-2").execute(cmd)

    assert result.claim_state is ClaimState.TAKEN_OVER
    assert isinstance(result.outcome, StepSucceeded)
    assert calls.keys == ["refund-ch_1"]
    assert len(outcomes.events) == 1


def gated(make_command: MakeCommand, payload: dict[str, Any], *grants: DecisionProof, **overrides: Any) -> ExecuteStep:
    """A write gated by approval ap-1 of this payload, carrying these signed grants."""
    fields: dict[str, Any] = {
        "input": payload,
        "side_effect": "write",
        "approval_id": "ap-1",
        "approval_ids": ["ap-1"],
        "approved_payload_hash": payload_hash(payload),
        "grants": list(grants),
    }
    return make_command(**{**fields, **overrides})


PAYLOAD = {"account": "acc-1", "amount": 1250}


def grant(**overrides: Any) -> DecisionProof:
    """ap-1 granted for step charge of run r-1 (what `make_command` builds), signed by the trusted key."""
    fields: dict[str, Any] = {"run_id": "r-1", "step_id": "charge", "payload": PAYLOAD, "workflow": "orders"}
    return signed_grant(**{**fields, **overrides})


async def test_a_payload_matching_its_signed_approval_runs(
    executor: Executor, make_command: MakeCommand, calls: ToolCalls
):
    result = await executor.execute(gated(make_command, PAYLOAD, grant()))

    assert isinstance(result.outcome, StepSucceeded)
    assert len(calls.calls) == 1


@pytest.mark.parametrize(
    ("why", "grants", "refusal"),
    [
        ("no signed grant comes with the approval it names", (), "no signed grant"),
        ("the grant is signed by a key the keyring does not hold", (grant(signer=Signer.generate()),), "does not hold"),
        ("the grant is for another step", (grant(step_id="other"),), "is for step other"),
        ("the grant is for another run", (grant(run_id="r-2"),), "of run r-2"),
        ("the grant approved another payload", (grant(payload={"amount": 1}),), "approved payload"),
        ("the decision was a denial", (grant(denied=True),), "was not granted"),
    ],
)
async def test_a_gated_write_without_a_verified_grant_of_exactly_it_is_refused_before_the_tool_runs(
    executor: Executor,
    make_command: MakeCommand,
    calls: ToolCalls,
    why: str,
    grants: tuple[DecisionProof, ...],
    refusal: str,
):
    result = await executor.execute(gated(make_command, PAYLOAD, *grants))

    outcome = result.outcome
    assert isinstance(outcome, StepFailed), why
    assert outcome.body.error_class is ErrorClass.REFUSED
    assert refusal in outcome.body.message, outcome.body.message
    assert calls.calls == []


async def test_a_grant_whose_signature_was_tampered_with_unlocks_nothing(
    executor: Executor, make_command: MakeCommand, calls: ToolCalls
):
    forged = grant().model_copy(update={"decided_by": ["mallory"]})  # the signature covers who decided

    result = await executor.execute(gated(make_command, PAYLOAD, forged))

    assert isinstance(result.outcome, StepFailed)
    assert "does not verify" in result.outcome.body.message
    assert calls.calls == []


async def test_an_approved_payload_hash_without_named_approvals_is_refused(
    executor: Executor, make_command: MakeCommand, calls: ToolCalls
):
    result = await executor.execute(gated(make_command, PAYLOAD, approval_ids=[], approval_id=None))

    assert isinstance(result.outcome, StepFailed)
    assert "nothing unlocks it" in result.outcome.body.message
    assert calls.calls == []


async def test_a_payload_that_differs_from_its_approval_is_refused_before_the_tool_runs(
    executor: Executor, make_command: MakeCommand, calls: ToolCalls
):
    approved = {"account": "acc-1", "amount": 1250}
    cmd = gated(make_command, approved, grant(payload=approved), input={"account": "acc-1", "amount": 99999})

    result = await executor.execute(cmd)

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.REFUSED
    assert "ap-1" in outcome.body.message
    assert calls.calls == []


async def test_a_write_whose_schedule_the_router_did_not_sign_is_refused_and_a_read_still_runs(
    executor: Executor, make_command: MakeCommand, calls: ToolCalls
):
    refused = await executor.execute(gated(make_command, PAYLOAD, grant()), distrust="no router signature")
    assert isinstance(refused.outcome, StepFailed) and refused.outcome.body.error_class is ErrorClass.REFUSED
    assert "not scheduled by the router" in refused.outcome.body.message and calls.calls == []

    read = await executor.execute(make_command(attempt=2), distrust="no router signature")
    assert isinstance(read.outcome, StepSucceeded) and len(calls.calls) == 1
