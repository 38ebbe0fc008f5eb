"""Tool context headers, the registry, and the demo tools (the ledger against a temporary SQLite file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from executor_testkit import MemoryClaims, MemoryOutcomes

from keel_contracts.commands import ExecuteStep
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepSucceeded
from keel_executor.errors import ToolError, TransientError, UnknownToolError, classify
from keel_executor.execution import Executor
from keel_executor.tools import demo
from keel_executor.tools.registry import ToolContext, ToolRegistry
from keel_shared.keyrings import Keyring

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def context(tmp_path: Path | str = "/nonexistent", **changes: object) -> ToolContext:
    fields: dict[str, object] = {
        "run_id": "r-1",
        "workflow": "orders",
        "step_id": "charge",
        "attempt": 1,
        "tenant": "acme",
        "correlation_id": "0af7651916cd43dd8448eb211c80319c",
        "idempotency_key": "refund-ch_1",
        "timeout_seconds": 30.0,
        "data_dir": str(tmp_path),
    }
    fields.update(changes)
    return ToolContext(**fields)  # type: ignore[arg-type]


# --- headers -----------------------------------------------------------------------------------------


def test_headers_carry_the_idempotency_key_the_run_and_step_and_a_valid_traceparent():
    headers = context().headers()

    assert headers["Idempotency-Key"] == "refund-ch_1"
    assert headers["X-Keel-Run-Id"] == "r-1"
    assert headers["X-Keel-Step-Id"] == "charge"
    assert TRACEPARENT.fullmatch(headers["traceparent"])
    # The trace id is the run's correlation id, so the system of record's logs join the run's.
    assert headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


def test_traceparent_span_differs_by_attempt_and_step_but_not_by_call():
    base = context().traceparent()
    assert context().traceparent() == base
    assert context(attempt=2).traceparent() != base
    assert context(step_id="notify").traceparent() != base
    assert context(attempt=2).traceparent().split("-")[1] == base.split("-")[1]


def test_traceparent_is_the_same_in_another_process():
    ctx = context()
    script = (
        "import json, sys\n"
        "from keel_executor.tools.registry import ToolContext\n"
        "print(json.dumps(ToolContext(**json.loads(sys.argv[1])).headers()))\n"
    )
    fields = {k: v for k, v in asdict(ctx).items() if k != "extra"}

    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(fields)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )

    assert json.loads(done.stdout) == ctx.headers()


@pytest.mark.parametrize(
    "correlation_id", ["5293fa98-eee1-49ba-9d30-cfaeb12893f0", "abc", "0af7651916cd43dd8448eb211c80319c00"]
)
def test_traceparent_is_valid_for_correlation_ids_keel_generates_or_that_are_hex(correlation_id: str):
    assert TRACEPARENT.fullmatch(context(correlation_id=correlation_id).traceparent())


@pytest.mark.parametrize("correlation_id", ["order-42", "TRIGGER-ABC"])
def test_traceparent_is_valid_whatever_the_correlation_id(correlation_id: str):
    assert TRACEPARENT.fullmatch(context(correlation_id=correlation_id).traceparent())


# --- registry ----------------------------------------------------------------------------------------


async def test_registry_finds_registered_tools_and_names_known_ones_for_an_unknown_name():
    registry = ToolRegistry({"demo.echo": demo.echo})
    registry.register("demo.fail", demo.fail)
    registry.register("demo.fail", demo.fail)  # the same tool again is harmless

    assert registry.names() == ["demo.echo", "demo.fail"]
    assert registry.get("demo.echo") is demo.echo
    with pytest.raises(UnknownToolError, match=r"'nope'.*demo\.echo.*demo\.fail"):
        registry.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("demo.echo", demo.fail)


def test_the_built_in_demo_tools_are_registered_as_entry_points():
    names = ToolRegistry.from_entry_points().names()
    assert {"demo.echo", "demo.sleep", "demo.fail", "demo.ledger"} <= set(names)


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [(ValueError("x"), ErrorClass.PERMANENT), (ConnectionError("x"), ErrorClass.TRANSIENT)],
)
def test_classify_untyped_exceptions(exc: BaseException, error_class: ErrorClass):
    assert classify(exc) is error_class


# --- demo tools --------------------------------------------------------------------------------------


async def test_demo_echo_returns_its_input_and_step():
    assert await demo.echo(context(), {"a": [1]}) == {"echo": {"a": [1]}, "step": "charge"}


@pytest.mark.parametrize("error_class", list(ErrorClass))
async def test_demo_fail_raises_the_error_class_it_is_asked_for(error_class: ErrorClass):
    with pytest.raises(ToolError) as info:
        await demo.fail(context(), {"error_class": str(error_class), "message": "asked to"})
    assert classify(info.value) is error_class
    assert str(info.value) == "asked to"


@pytest.fixture
def ledger_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KEEL_DEMO_LEDGER_URL", raising=False)
    return tmp_path


async def test_demo_ledger_applies_its_effect_once_per_idempotency_key(ledger_dir: Path):
    ctx = context(ledger_dir)

    first = await demo.ledger(ctx, {"account": "acc-1", "amount": 7})
    second = await demo.ledger(context(ledger_dir, attempt=2), {"account": "acc-1", "amount": 7})

    assert first["replayed"] is False
    assert second["replayed"] is True
    assert second["effect_id"] == first["effect_id"]
    url = demo.ledger_url(str(ledger_dir))
    assert url == f"sqlite:///{ledger_dir / 'demo-ledger.db'}"
    assert demo.ledger_counts(url) == {"invocations": 2, "effects": 1}
    assert demo.ledger_counts(url, run_id="r-1") == {"invocations": 2, "effects": 1}
    assert demo.ledger_counts(url, run_id="r-other") == {"invocations": 0, "effects": 0}


async def test_demo_ledger_with_another_idempotency_key_is_another_effect(ledger_dir: Path):
    await demo.ledger(context(ledger_dir), {"amount": 1})
    other = await demo.ledger(context(ledger_dir, idempotency_key="refund-ch_2"), {"amount": 1})

    assert other["replayed"] is False
    assert demo.ledger_counts(demo.ledger_url(str(ledger_dir))) == {"invocations": 2, "effects": 2}


async def test_demo_ledger_uses_the_database_named_by_keel_demo_ledger_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("KEEL_DEMO_LEDGER_URL", url)

    await demo.ledger(context(tmp_path / "unused"), {"amount": 1})

    assert demo.ledger_counts(url) == {"invocations": 1, "effects": 1}
    assert not (tmp_path / "unused" / "demo-ledger.db").exists()


@pytest.mark.parametrize("data", [{"amount": "1"}, {"account": 5}, {"delay": "soon"}])
async def test_demo_ledger_refuses_bad_input_before_recording_anything(ledger_dir: Path, data: dict):
    with pytest.raises(ToolError, match=r"demo\.ledger needs"):
        await demo.ledger(context(ledger_dir), data)
    assert demo.ledger_counts(demo.ledger_url(str(ledger_dir))) == {"invocations": 0, "effects": 0}


async def test_executor_retry_of_a_ledger_write_under_the_same_key_posts_once(
    ledger_dir: Path, make_command: Callable[..., ExecuteStep], claims: MemoryClaims, outcomes: MemoryOutcomes
):
    executor = Executor(
        ToolRegistry({"demo.ledger": demo.ledger}),
        claims,
        outcomes,
        "ex-1",
        str(ledger_dir),
        Keyring("keel-approval-decisions"),
    )

    first = await executor.execute(make_command(tool="demo.ledger", input={"amount": 3}, attempt=1))
    second = await executor.execute(make_command(tool="demo.ledger", input={"amount": 3}, attempt=2))

    assert isinstance(first.outcome, StepSucceeded) and isinstance(second.outcome, StepSucceeded)
    assert first.outcome.body.output["replayed"] is False
    assert second.outcome.body.output["replayed"] is True
    assert demo.ledger_counts(demo.ledger_url(str(ledger_dir)), run_id="r-1") == {"invocations": 2, "effects": 1}


async def test_demo_flaky_fails_transiently_the_planned_number_of_times_then_posts_once(ledger_dir: Path):
    ctx = context(ledger_dir)
    for _ in range(2):
        with pytest.raises(TransientError):
            await demo.flaky(ctx, {"fail_times": 2})

    result = await demo.flaky(ctx, {"fail_times": 2})

    assert result["calls"] == 3
    assert result["replayed"] is False
    assert demo.ledger_counts(demo.ledger_url(str(ledger_dir))) == {"invocations": 3, "effects": 1}


async def test_executor_reports_a_demo_fail_with_the_requested_class(
    make_command: Callable[..., ExecuteStep], claims: MemoryClaims, outcomes: MemoryOutcomes, tmp_path: Path
):
    executor = Executor(
        ToolRegistry({"demo.fail": demo.fail}),
        claims,
        outcomes,
        "ex-1",
        str(tmp_path),
        Keyring("keel-approval-decisions"),
    )

    result = await executor.execute(make_command(tool="demo.fail", input={"error_class": "business_rule"}))

    assert isinstance(result.outcome, StepFailed)
    assert result.outcome.body.error_class is ErrorClass.BUSINESS_RULE
