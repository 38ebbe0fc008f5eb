"""One valid sample of every run event type, for codec and schema tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalExpiredBody,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalRequestedBody,
    ApprovalTarget,
    ApprovalWithdrawn,
    ApprovalWithdrawnBody,
    payload_hash,
)
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    HumanInputReceived,
    HumanInputReceivedBody,
    HumanInputRejected,
    HumanInputRejectedBody,
    HumanInputRequested,
    HumanInputRequestedBody,
    RetryScheduled,
    RetryScheduledBody,
    RouteDecided,
    RouteDecidedBody,
    RunBlocked,
    RunBlockedBody,
    RunCancelled,
    RunCancelledBody,
    RunCompleted,
    RunCompletedBody,
    RunFailed,
    RunFailedBody,
    RunStarted,
    RunStartedBody,
    StepFailed,
    StepFailedBody,
    StepScheduled,
    StepScheduledBody,
    StepSucceeded,
    StepSucceededBody,
    TriggerJoined,
    TriggerJoinedBody,
    WaitStarted,
    WaitStartedBody,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _env(**extra: Any) -> dict[str, Any]:
    return {
        "run_id": "r-sample",
        "workflow": "orders",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "actor": "router",
        "tenant": "acme",
        "dedupe_key": "r-sample:sample",
        "occurred_at": T0,
        **extra,
    }


def _samples() -> dict[str, Message]:
    step = {"step_id": "charge", "attempt": 2}
    payload = {"account": "acc-1", "amount": 1250}
    decision = ApprovalDecisionBody(
        approval_id="ap-1",
        payload_hash=payload_hash(payload),
        decided_by=["alice@example.com"],
        roles=["finance"],
        reason="looks right",
        decided_at=T0,
    )
    return {
        "approval_requested": ApprovalRequested(
            **_env(step_id="approve"),
            body=ApprovalRequestedBody(
                approval_id="ap-1",
                roles=["finance"],
                quorum=2,
                approves_step="charge",
                tool="billing.charge",
                payload=payload,
                payload_hash=payload_hash(payload),
                before={"amount": 0},
                target=ApprovalTarget(system="billing", operation="charge", record="acc-1"),
                summary="charge 12.50",
                evidence={"ticket": "T-1"},
                reason="policy: money",
                requested_by="router",
                expires_at=T0,
                escalate_to="escalate",
            ),
        ),
        "approval_granted": ApprovalGranted(**_env(step_id="approve"), body=decision),
        "approval_denied": ApprovalDenied(**_env(step_id="approve"), body=decision),
        "approval_expired": ApprovalExpired(
            **_env(step_id="approve"),
            body=ApprovalExpiredBody(approval_id="ap-1", expired_at=T0, escalate_to="escalate"),
        ),
        "approval_withdrawn": ApprovalWithdrawn(
            **_env(step_id="approve"),
            body=ApprovalWithdrawnBody(approval_id="ap-1", because="run_cancelled", reason="the run ended"),
        ),
        "run_started": RunStarted(
            **_env(),
            body=RunStartedBody(
                intent_key="order-1",
                source="cli",
                trigger_id="t-1",
                input={"n": 1, "nested": {"list": [1, 2.5, "x", None, True]}},
                workflow_version=3,
            ),
        ),
        "trigger_joined": TriggerJoined(
            **_env(), body=TriggerJoinedBody(intent_key="order-1", source="webhook", trigger_id="t-2")
        ),
        "step_scheduled": StepScheduled(
            **_env(**step),
            body=StepScheduledBody(
                tool="billing.charge",
                input={"amount": 1250},
                idempotency_key="idem-1",
                command_id="r-sample.charge.1.2",
                timeout_seconds=12.5,
                reason="retry 2 of charge",
                result_path="steps.charge",
                side_effect="write",
            ),
        ),
        "step_succeeded": StepSucceeded(
            **_env(**step),
            body=StepSucceededBody(
                tool="billing.charge", output={"receipt": "rc-1"}, started_at=T0, finished_at=T0, executor_id="ex-1"
            ),
        ),
        "step_failed": StepFailed(
            **_env(**step),
            body=StepFailedBody(
                tool="billing.charge",
                error_class=ErrorClass.UNKNOWN_OUTCOME,
                error_type="ReadTimeout",
                message="no answer",
                started_at=T0,
                finished_at=T0,
                executor_id="ex-1",
            ),
        ),
        "retry_scheduled": RetryScheduled(
            **_env(**step),
            body=RetryScheduledBody(
                next_attempt=3,
                retrier_index=1,
                error_class=ErrorClass.TRANSIENT,
                delay_seconds=4.0,
                due_at=T0,
                reason="transient: retry",
            ),
        ),
        "route_decided": RouteDecided(
            **_env(step_id="decide"),
            body=RouteDecidedBody(kind="choice", to_step="vip", why="choices[0] matched"),
        ),
        "run_completed": RunCompleted(**_env(), body=RunCompletedBody(output={"ok": True}, reason="done")),
        "run_failed": RunFailed(
            **_env(),
            body=RunFailedBody(reason="charge failed", error_class=ErrorClass.PERMANENT, failed_step="charge"),
        ),
        "human_input_requested": HumanInputRequested(
            **_env(step_id="classify"),
            body=HumanInputRequestedBody(
                kind="decide",
                queue="decisions",
                prompt="Choose an intent",
                missing="payload.title",
                reason="decide classify: missing payload.title",
                input_schema={"type": "object", "required": ["intent"]},
                context={"input": {"text": "help"}},
                expires_at=T0,
            ),
        ),
        "human_input_received": HumanInputReceived(
            **_env(step_id="review"),
            body=HumanInputReceivedBody(input={"resolution": "ok"}, submitted_by="ops@example.com", command_id="c-1"),
        ),
        "human_input_rejected": HumanInputRejected(
            **_env(step_id="review"),
            body=HumanInputRejectedBody(
                problems=["input.resolution: required field is missing"], submitted_by="ops", command_id="c-2"
            ),
        ),
        "wait_started": WaitStarted(
            **_env(step_id="cool_off"),
            body=WaitStartedBody(due_at=T0, timer_id="wait-cool_off-7", reason="waiting until noon"),
        ),
        "run_blocked": RunBlocked(
            **_env(step_id="charge"),
            body=RunBlockedBody(cap="max_steps_per_run", limit=3, value=3, reason="cap max_steps_per_run reached"),
        ),
        "run_cancelled": RunCancelled(
            **_env(),
            body=RunCancelledBody(reason="cancelled by ops: wrong order", requested_by="ops", in_flight_step="charge"),
        ),
    }


@pytest.fixture
def sample_events() -> dict[str, Message]:
    return _samples()


@pytest.fixture
def sample_event() -> Callable[[str], Message]:
    samples = _samples()
    return samples.__getitem__
