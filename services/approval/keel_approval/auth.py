"""Authenticating HTTP callers: API clients by bearer token, inbox users by session cookie."""

import asyncio
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keel_approval.domain import Approver
from keel_approval.metrics import AUTH_FAILURES
from keel_approval.service import ApprovalService

SESSION_COOKIE = "keel_approval_session"
LOGIN_CSRF_COOKIE = "keel_approval_login_csrf"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApproverToken",
    description="An approver's API token (`keel approvers add NAME --role ROLE` prints it once)",
)


def get_service(request: Request) -> ApprovalService:
    service: ApprovalService | None = request.app.state.service
    if service is None:
        raise HTTPException(503, "the approval service is not running")
    return service


ServiceDep = Annotated[ApprovalService, Depends(get_service)]


async def api_approver(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Approver:
    token = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else ""
    approver = await asyncio.to_thread(service.directory.authenticate, token) if token else None
    if approver is None:
        AUTH_FAILURES.inc()
        raise HTTPException(401, "a valid approver token is required", headers={"WWW-Authenticate": "Bearer"})
    return approver


ApiApprover = Annotated[Approver, Depends(api_approver)]
