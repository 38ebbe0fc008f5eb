"""Helpers for the router's integration tests: read a run's state and timeline, publish what other
services would (an approval decision) straight onto the run's subjects, and run the `keel` command."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from typing import Any

import nats

from keel_cli.client import KeelClient, TimelineEntry
from keel_contracts import subjects as s
from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalExpiredBody,
    ApprovalGranted,
    ApprovalRequested,
)
from keel_contracts.codec import encode
from keel_contracts.envelope import utcnow
from keel_contracts.runs import RunView
from keel_shared.decisions import sign_decision
from tests.conftest import StackHandle, eventually


async def status_of(keel: KeelClient, run_id: str) -> str | None:
    view = await keel.run(run_id)
    return None if view is None else str(view.status)


async def reaches(keel: KeelClient, run_id: str, status: str, timeout: float = 60.0) -> RunView:
    """Poll the run-state view until the run is in `status`."""

    async def check() -> RunView | None:
        view = await keel.run(run_id)
        return view if view is not None and view.status == status else None

    return await eventually(check, timeout=timeout)


def types(timeline: list[TimelineEntry]) -> list[str]:
    return [entry.type for entry in timeline]


def events_of(timeline: list[TimelineEntry], event_type: str) -> list[Any]:
    return [entry.event for entry in timeline if entry.type == event_type]


async def approval_request(keel: KeelClient, run_id: str, step_id: str | None = None) -> ApprovalRequested:
    requests = events_of(await keel.timeline(run_id), "approval_requested")
    if step_id is not None:
        requests = [r for r in requests if r.step_id == step_id]
    return requests[-1]


async def decide_approval(
    stack: StackHandle,
    request: ApprovalRequested,
    kind: str = "granted",
    *,
    by: str = "fin@example.com",
    reason: str = "",
) -> None:
    """Publish the decision the approval service would, signed with the stack's decision key, on the run's
    subject with emitter `approval`."""
    env: dict[str, Any] = {
        "run_id": request.run_id,
        "workflow": request.workflow,
        "tenant": request.tenant,
        "step_id": request.step_id,
        "correlation_id": request.correlation_id,
        "causation_id": request.id,
        "actor": s.APPROVAL,
        "dedupe_key": f"{request.run_id}:approval:{request.body.approval_id}:decided",
    }
    if kind == "expired":
        event: Any = ApprovalExpired(
            **env, body=ApprovalExpiredBody(approval_id=request.body.approval_id, expired_at=utcnow())
        )
    else:
        body = ApprovalDecisionBody(
            approval_id=request.body.approval_id,
            payload_hash=request.body.payload_hash,
            decided_by=[by],
            roles=list(request.body.roles),
            reason=reason,
            decided_at=utcnow(),
        )
        unsigned = (ApprovalGranted if kind == "granted" else ApprovalDenied)(**env, body=body)
        event = sign_decision(stack.decision_signer, unsigned, request.body.approves_step)
    nc = await nats.connect(stack.nats_url)
    try:
        subject = s.event_subject(request.workflow, request.run_id, s.APPROVAL, event.type)
        await nc.jetstream().publish(subject, encode(event), headers={"Nats-Msg-Id": event.dedupe_key})
    finally:
        await nc.close()


async def keel_cli(*args: str, url: str) -> tuple[int, str, str]:
    """Run `keel ARGS --nats-url URL` as a process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel_cli.main", *args, "--nats-url", url, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()
