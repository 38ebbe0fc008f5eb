"""The JSON API: what the CLI and other clients use. Every route acts as the approver whose bearer
token it carries and sees only approvals that name one of that approver's roles."""

from typing import Literal

from fastapi import APIRouter, Query

from keel_approval.auth import ApiApprover, ServiceDep
from keel_approval.schemas import (
    ApprovalDetail,
    ApprovalList,
    ApprovalSummary,
    ApproveIn,
    ApproverOut,
    DecisionOut,
    DenyIn,
    ErrorOut,
)
from keel_approval.store import Decided

ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "No valid approver token"},
    403: {"model": ErrorOut, "description": "Not allowed: role mismatch, or the requester deciding its own request"},
    404: {"model": ErrorOut, "description": "No such approval"},
}
DECISION_ERRORS: dict[int | str, dict[str, object]] = {
    **ERRORS,
    409: {
        "model": ErrorOut,
        "description": "Already decided, already voted, expired, superseded, or the payload hash does not match",
    },
    413: {"model": ErrorOut, "description": "The request body is over 32 KiB (error `too_large`)"},
    422: {"model": ErrorOut, "description": "Invalid decision (a denial without a reason, a reason too long)"},
}

router = APIRouter(prefix="/api/v1", tags=["approvals"])


def _decision(decided: Decided) -> DecisionOut:
    record = decided.record
    return DecisionOut(
        approval_id=record.approval_id,
        status=record.status.value,
        settled=decided.decision.final,
        event=decided.event.type if decided.event is not None else None,
        payload_hash=record.payload_hash,
        decided_by=list(record.decided_by),
        approvals=len(record.votes),
        published=record.published,
    )


@router.get("/me", response_model=ApproverOut, responses=ERRORS, summary="Who the token belongs to")
async def me(approver: ApiApprover) -> ApproverOut:
    return ApproverOut(name=approver.name, roles=sorted(approver.roles))


@router.get("/approvals", response_model=ApprovalList, responses=ERRORS, summary="Approvals for my roles")
async def list_approvals(
    service: ServiceDep,
    approver: ApiApprover,
    status: Literal["pending", "settled", "all"] = Query("pending", description="Which approvals to list"),
) -> ApprovalList:
    records = []
    if status in ("pending", "all"):
        records += await service.inbox(approver)
    if status in ("settled", "all"):
        records += await service.history(approver)
    return ApprovalList(
        approver=ApproverOut(name=approver.name, roles=sorted(approver.roles)),
        approvals=[ApprovalSummary.of(r) for r in records],
    )


@router.get(
    "/approvals/{approval_id:path}",
    response_model=ApprovalDetail,
    responses=ERRORS,
    summary="One approval: payload, diff, target, evidence, history",
)
async def get_approval(approval_id: str, service: ServiceDep, approver: ApiApprover) -> ApprovalDetail:
    record = await service.visible(approver, approval_id)
    return ApprovalDetail.of(record, await service.write_of(record))


@router.post(
    "/approvals/{approval_id:path}/approve",
    response_model=DecisionOut,
    responses=DECISION_ERRORS,
    summary="Approve the exact payload named by payload_hash",
)
async def approve(approval_id: str, body: ApproveIn, service: ServiceDep, approver: ApiApprover) -> DecisionOut:
    return _decision(await service.approve(approval_id, approver, body.payload_hash, body.reason, body.role))


@router.post(
    "/approvals/{approval_id:path}/deny",
    response_model=DecisionOut,
    responses=DECISION_ERRORS,
    summary="Deny, with a reason",
)
async def deny(approval_id: str, body: DenyIn, service: ServiceDep, approver: ApiApprover) -> DecisionOut:
    return _decision(await service.deny(approval_id, approver, body.payload_hash, body.reason, body.role))
