"""Whether an approved write happened, read from the run's events (keel_approval.writes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keel_approval.writes import write_outcome
from keel_contracts.commands import execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RunCancelled,
    RunCancelledBody,
    RunFailed,
    RunFailedBody,
    StepFailed,
    StepFailedBody,
    StepScheduled,
    StepScheduledBody,
    StepSucceeded,
    StepSucceededBody,
)

T = datetime(2030, 1, 1, tzinfo=UTC)
ENV: dict[str, Any] = {"run_id": "r1", "workflow": "refund", "correlation_id": "c", "actor": "router"}


def scheduled(attempt: int = 1, approvals: tuple[str, ...] = ("ap-1",)) -> StepScheduled:
    return StepScheduled(
        **ENV,
        step_id="refund",
        attempt=attempt,
        dedupe_key=f"s{attempt}",
        body=StepScheduledBody(
            tool="billing.refund",
            input={"amount": 5},
            idempotency_key="k",
            command_id=f"r1:refund:1:{attempt}",
            timeout_seconds=5,
            reason="approved",
            side_effect="write",
            approval_ids=list(approvals),
        ),
    )


def outcome(attempt: int = 1, ok: bool = True) -> Message:
    env = {**ENV, "step_id": "refund", "attempt": attempt, "dedupe_key": f"o{attempt}"}
    env["causation_id"] = execute_message_id(f"r1:refund:1:{attempt}")
    common = {"tool": "billing.refund", "started_at": T, "finished_at": T, "executor_id": "ex"}
    if ok:
        return StepSucceeded(**env, body=StepSucceededBody(output={"refund_id": "re_1"}, **common))
    return StepFailed(
        **env,
        body=StepFailedBody(error_class=ErrorClass.TRANSIENT, error_type="Timeout", message="slow", **common),
    )


def cancelled() -> RunCancelled:
    return RunCancelled(**ENV, dedupe_key="x", body=RunCancelledBody(reason="stop", requested_by="ops"))


def test_a_write_that_succeeded_was_written() -> None:
    result = write_outcome("ap-1", [scheduled(), outcome()])
    assert result.state == "written" and result.final and "billing.refund" in result.detail


def test_a_write_retried_after_a_failure_and_then_done_was_written() -> None:
    assert write_outcome("ap-1", [scheduled(1), outcome(1, ok=False), scheduled(2), outcome(2)]).state == "written"


def test_a_failed_attempt_of_a_run_still_going_is_pending() -> None:
    result = write_outcome("ap-1", [scheduled(), outcome(ok=False)])
    assert result.state == "pending" and not result.final and "transient" in result.detail


def test_a_write_whose_last_attempt_failed_when_the_run_ended_failed() -> None:
    failed = RunFailed(**ENV, dedupe_key="f", body=RunFailedBody(reason="gave up"))
    assert write_outcome("ap-1", [scheduled(), outcome(ok=False), failed]).state == "failed"


def test_a_run_that_ended_before_sending_the_write_never_wrote() -> None:
    result = write_outcome("ap-1", [cancelled()])
    assert result.state == "not_sent" and "cancelled" in result.detail


def test_another_approvals_write_tells_nothing_about_this_one() -> None:
    assert write_outcome("ap-1", [scheduled(approvals=("ap-2",)), outcome()]).state == "pending"
