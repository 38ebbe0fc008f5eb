"""Authenticating HTTP callers: API clients by bearer token, inbox users by session cookie."""

import asyncio
from math import ceil
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keel_approval.domain import Approver
from keel_approval.metrics import AUTH_FAILURES
from keel_approval.service import ApprovalService
from keel_approval.throttle import GuessThrottle

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


def client_of(request: Request) -> str:
    """Who is guessing: the peer address of the connection."""
    return request.client.host if request.client else "unknown"


def throttled(request: Request) -> HTTPException | None:
    """429 with Retry-After for a client that sent too many wrong tokens lately, else None."""
    guard: GuessThrottle = request.app.state.throttle
    wait = guard.retry_after(client_of(request))
    if wait is None:
        return None
    return HTTPException(
        429, "too many wrong tokens from this client; try again later", headers={"Retry-After": str(ceil(wait))}
    )


async def authenticate(request: Request, service: ApprovalService, token: str) -> Approver | None:
    """The approver a token names, counted against the client's guesses (`keel_approval.throttle`)."""
    refusal = throttled(request)
    if refusal is not None:
        raise refusal
    guard: GuessThrottle = request.app.state.throttle
    approver = await asyncio.to_thread(service.directory.authenticate, token) if token else None
    if approver is None:
        AUTH_FAILURES.inc()
        guard.failed(client_of(request))
    else:
        guard.succeeded(client_of(request))
    return approver


async def api_approver(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Approver:
    token = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else ""
    approver = await authenticate(request, service, token)
    if approver is None:
        raise HTTPException(401, "a valid approver token is required", headers={"WWW-Authenticate": "Bearer"})
    return approver


ApiApprover = Annotated[Approver, Depends(api_approver)]
