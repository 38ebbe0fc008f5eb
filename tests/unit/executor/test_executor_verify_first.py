"""Verify-first after an unknown outcome, Retry-After on failures, and re-reporting a lost outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from executor_testkit import MemoryClaims, MemoryOutcomes
from pydantic import JsonValue

from keel_contracts.commands import ExecuteStep, VerifySpec
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepSucceeded
from keel_executor.claims import ClaimState
from keel_executor.errors import AuthError, TransientError, UnknownOutcomeError
from keel_executor.execution import Executor
from keel_executor.tools.registry import ToolContext, ToolRegistry

MakeCommand = Callable[..., ExecuteStep]


class FakeSystem:
    """A system of record seen through a write tool and a read-back, both scripted per call."""

    def __init__(self, writes: list[Any], reads: list[Any] | None = None) -> None:
        self._writes = list(writes)
        self._reads = list(reads or [])
        self.write_calls: list[tuple[str, dict[str, JsonValue]]] = []
        self.read_calls: list[tuple[str, dict[str, JsonValue]]] = []

    @staticmethod
    def _next(script: list[Any]) -> Any:
        step = script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def write(self, ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        self.write_calls.append((ctx.idempotency_key, data))
        return self._next(self._writes)  # type: ignore[no-any-return]

    async def read(self, ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        self.read_calls.append((ctx.idempotency_key, data))
        return self._next(self._reads)  # type: ignore[no-any-return]


def lost() -> UnknownOutcomeError:
    return UnknownOutcomeError("POST /refunds was sent and no clean answer came back")


SPEC = VerifySpec(tool="test.lookup", input={"key": "refund-1"})


def registry(system: FakeSystem) -> ToolRegistry:
    return ToolRegistry({"test.write": system.write, "test.lookup": system.read})


def command(make_command: MakeCommand, **body: Any) -> ExecuteStep:
    defaults: dict[str, Any] = {"tool": "test.write", "idempotency_key": "refund-1", "side_effect": "write"}
    return make_command(**{**defaults, **body})


async def test_found_after_an_unknown_outcome_is_a_success_with_the_found_record(
    make_executor: Callable[..., Executor], make_command: MakeCommand, outcomes: MemoryOutcomes
):
    system = FakeSystem([lost()], [{"found": True, "record": {"id": "re_1", "amount": 5}}])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_1", "amount": 5, "verified": True}
    assert len(system.write_calls) == 1  # never sent again
    assert system.read_calls == [("refund-1", {"key": "refund-1"})]  # the rendered verify input
    assert outcomes.events == [result.outcome]


async def test_not_found_resends_the_write_once_at_once_with_the_same_key(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost(), {"id": "re_2"}], [{"found": False}])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_2"}
    assert [key for key, _ in system.write_calls] == ["refund-1", "refund-1"]
    assert system.write_calls[0][1] == system.write_calls[1][1]  # the same request
    assert len(system.read_calls) == 1


@pytest.mark.parametrize(
    "answer",
    [TransientError("lookup answered 503"), {"maybe": True}, {"found": "yes"}, ["not", "an", "object"]],
    ids=["read-back-failed", "no-found-field", "found-not-a-bool", "not-an-object"],
)
async def test_a_read_back_that_cannot_tell_fails_with_unknown_outcome_and_says_so(
    make_executor: Callable[..., Executor], make_command: MakeCommand, answer: object
):
    system = FakeSystem([lost()], [answer])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert "verification could not decide" in outcome.body.message
    assert "POST /refunds was sent" in outcome.body.message
    assert len(system.write_calls) == 1


async def test_a_resend_that_is_lost_again_is_verified_again(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost(), lost()], [{"found": False}, {"found": True, "record": {"id": "re_3"}}])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_3", "verified": True}
    assert len(system.write_calls) == 2 and len(system.read_calls) == 2


async def test_the_loop_is_bounded_to_one_resend(make_executor: Callable[..., Executor], make_command: MakeCommand):
    system = FakeSystem([lost(), lost(), {"id": "never"}], [{"found": False}, {"found": False}, {"found": False}])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    outcome = result.outcome
    assert isinstance(outcome, StepFailed)
    assert outcome.body.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert "verification could not decide" in outcome.body.message
    assert len(system.write_calls) == 2 and len(system.read_calls) == 2


async def test_a_resend_refused_for_another_reason_reports_that_reason(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost(), AuthError("token expired")], [{"found": False}])

    result = await make_executor(registry(system)).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.AUTH


async def test_without_any_read_back_an_unknown_outcome_is_reported_as_it_is(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost()])

    result = await make_executor(registry(system)).execute(command(make_command))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert len(system.write_calls) == 1


async def test_the_tools_own_read_back_is_used_when_the_workflow_has_no_verify(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost()], [{"found": True, "record": {"id": "re_4"}}])

    async def write(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return await system.write(ctx, data)

    write.verify = system.read  # type: ignore[attr-defined]

    result = await make_executor(ToolRegistry({"test.write": write})).execute(
        command(make_command, input={"amount": 9})
    )

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_4", "verified": True}
    assert system.read_calls == [("refund-1", {"amount": 9})]  # called with the write's own input


async def test_the_workflows_verify_wins_over_the_tools_own(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([lost()], [{"found": True, "record": {"from": "workflow"}}])

    async def write(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return await system.write(ctx, data)

    async def own(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        raise AssertionError("the tool's own read-back must not run")

    write.verify = own  # type: ignore[attr-defined]
    tools = ToolRegistry({"test.write": write, "test.lookup": system.read})

    result = await make_executor(tools).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"from": "workflow", "verified": True}


async def test_a_taken_over_write_is_verified_before_it_is_sent_again(
    make_executor: Callable[..., Executor], make_command: MakeCommand, claims: MemoryClaims
):
    system = FakeSystem([], [{"found": True, "record": {"id": "re_5"}}])
    cmd = command(make_command, verify=SPEC)
    await claims.claim(cmd.dedupe_key, "ex-dead")  # it died mid-call

    result = await make_executor(registry(system), "ex-2").execute(cmd)

    assert result.claim_state is ClaimState.TAKEN_OVER
    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_5", "verified": True}
    assert system.write_calls == []


async def test_a_taken_over_write_that_did_not_land_is_sent_with_the_same_key(
    make_executor: Callable[..., Executor], make_command: MakeCommand, claims: MemoryClaims
):
    system = FakeSystem([{"id": "re_6"}], [{"found": False}])
    cmd = command(make_command, verify=SPEC)
    await claims.claim(cmd.dedupe_key, "ex-dead")

    result = await make_executor(registry(system), "ex-2").execute(cmd)

    assert isinstance(result.outcome, StepSucceeded)
    assert result.outcome.body.output == {"id": "re_6"}
    assert [key for key, _ in system.write_calls] == ["refund-1"]


async def test_a_taken_over_write_whose_read_back_cannot_tell_is_not_sent(
    make_executor: Callable[..., Executor], make_command: MakeCommand, claims: MemoryClaims
):
    system = FakeSystem([], [TransientError("lookup down")])
    cmd = command(make_command, verify=SPEC)
    await claims.claim(cmd.dedupe_key, "ex-dead")

    result = await make_executor(registry(system), "ex-2").execute(cmd)

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert "verification could not decide" in result.outcome.body.message
    assert system.write_calls == []


async def test_a_taken_over_read_is_simply_run_again(
    make_executor: Callable[..., Executor], make_command: MakeCommand, claims: MemoryClaims
):
    system = FakeSystem([{"rows": 1}], [])
    cmd = command(make_command, verify=SPEC, side_effect="read")
    await claims.claim(cmd.dedupe_key, "ex-dead")

    result = await make_executor(registry(system), "ex-2").execute(cmd)

    assert isinstance(result.outcome, StepSucceeded)
    assert system.read_calls == []


async def test_a_verify_tool_that_is_not_registered_fails_before_any_write(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([{"id": "x"}])
    tools = ToolRegistry({"test.write": system.write})

    result = await make_executor(tools).execute(command(make_command, verify=SPEC))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.PERMANENT
    assert "test.lookup" in result.outcome.body.message
    assert system.write_calls == []


async def test_retry_after_from_the_tool_is_reported_with_the_failure(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([TransientError("429 slow down", retry_after=12.5)])

    result = await make_executor(registry(system)).execute(command(make_command))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.retry_after_seconds == 12.5


async def test_a_failure_without_retry_after_reports_none(
    make_executor: Callable[..., Executor], make_command: MakeCommand
):
    system = FakeSystem([TransientError("503")])

    result = await make_executor(registry(system)).execute(command(make_command))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.retry_after_seconds is None
