"""Fixtures for the executor tests: in-memory claims and outcomes, a registry of recording test tools."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from executor_testkit import T0, MemoryClaims, MemoryOutcomes, ToolCalls
from pydantic import JsonValue

from keel_contracts.commands import ExecuteStep, ExecuteStepBody
from keel_executor.execution import Executor
from keel_executor.tools.registry import ToolRegistry
from tests.conftest import TEST_DECISION_SIGNER, trusting


@pytest.fixture
def claims() -> MemoryClaims:
    return MemoryClaims()


@pytest.fixture
def outcomes() -> MemoryOutcomes:
    return MemoryOutcomes()


@pytest.fixture
def calls() -> ToolCalls:
    return ToolCalls()


@pytest.fixture
def registry(calls: ToolCalls) -> ToolRegistry:
    return ToolRegistry({"test.echo": calls.tool(lambda ctx, data: {"echo": data, "step": ctx.step_id})})


@pytest.fixture
def make_executor(claims: MemoryClaims, outcomes: MemoryOutcomes, tmp_path: Path) -> Callable[..., Executor]:
    def make(tools: ToolRegistry, executor_id: str = "ex-1") -> Executor:
        return Executor(
            tools, claims, outcomes, executor_id, str(tmp_path), trusting(TEST_DECISION_SIGNER), clock=lambda: T0
        )

    return make


@pytest.fixture
def executor(make_executor: Callable[..., Executor], registry: ToolRegistry) -> Executor:
    return make_executor(registry)


@pytest.fixture
def make_command() -> Callable[..., ExecuteStep]:
    def make(
        tool: str = "test.echo",
        input: dict[str, JsonValue] | None = None,
        attempt: int = 1,
        idempotency_key: str = "idem-1",
        timeout_seconds: float = 30,
        **body: Any,
    ) -> ExecuteStep:
        return ExecuteStep(
            run_id="r-1",
            workflow="orders",
            tenant="acme",
            step_id="charge",
            attempt=attempt,
            correlation_id="0af7651916cd43dd8448eb211c80319c",
            actor="router",
            dedupe_key=f"r-1.charge.1.{attempt}",
            body=ExecuteStepBody(
                tool=tool,
                input=input if input is not None else {"amount": 5},
                idempotency_key=idempotency_key,
                timeout_seconds=timeout_seconds,
                **body,
            ),
        )

    return make
