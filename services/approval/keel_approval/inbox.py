"""The web inbox: server-rendered pages for approvers, no JavaScript.

Log in with an API token once; the inbox then keeps a server-side session (cookie: HttpOnly, SameSite=Lax,
Secure when configured). Every form post carries a CSRF token derived from the session secret, and the
login form a double-submit token, so another site can neither decide nor log someone in. Jinja2
autoescaping renders payloads, reasons and evidence as text; a record link is only made clickable when
it is plain http(s).
"""

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from keel_approval.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, ServiceDep, authenticate, throttled
from keel_approval.domain import Approver, DecisionRefused
from keel_approval.records import ApprovalRecord
from keel_approval.tokens import csrf_token, same

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
templates.env.autoescape = True

NOTICES = {
    "approved": "Approved: the write is unlocked for this exact payload.",
    "vote": "Your approval is recorded; the request needs more approvals before the write is unlocked.",
    "denied": "Denied: the write will not run.",
    "loggedout": "You are logged out.",
}

router = APIRouter(prefix="/inbox", include_in_schema=False)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (when - datetime.now(UTC)).total_seconds()
    future = seconds >= 0
    seconds = abs(seconds)
    if seconds < 90:
        span = f"{int(seconds)} s"
    elif seconds < 5400:
        span = f"{int(seconds // 60)} min"
    elif seconds < 2 * 86400:
        span = f"{seconds / 3600:.1f} h"
    else:
        span = f"{seconds / 86400:.1f} days"
    return f"in {span}" if future else f"{span} ago"


templates.env.filters["pretty"] = _pretty
templates.env.filters["ago"] = _ago


class LoginRequired(Exception):
    pass


async def _session(request: Request, service: ServiceDep) -> tuple[Approver, str]:
    token = request.cookies.get(SESSION_COOKIE, "")
    approver = await asyncio.to_thread(service.directory.session_approver, token) if token else None
    if approver is None:
        raise LoginRequired
    return approver, token


Session = Annotated[tuple[Approver, str], Depends(_session)]


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _check_csrf(session_token: str, presented: str) -> bool:
    return bool(presented) and same(csrf_token(session_token), presented)


@router.get("/login")
async def login_page(request: Request, error: str = "") -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = _page(
        request, "login.html", error=error, csrf=nonce, notice=NOTICES.get(request.query_params.get("n", ""))
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        nonce,
        httponly=True,
        samesite="strict",
        path="/inbox",
        secure=request.app.state.cookie_secure,
    )
    return response


@router.post("/login")
async def login(
    request: Request, service: ServiceDep, token: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not same(expected, csrf):
        return await login_page(request, error="The login form expired; please try again.")
    refusal = throttled(request)
    if refusal is not None:
        page = await login_page(request, error="Too many wrong tokens from here; wait a minute and try again.")
        page.status_code = 429
        page.headers.update(refusal.headers or {})
        return page
    approver = await authenticate(request, service, token.strip())
    if approver is None:
        return await login_page(request, error="That token is not valid.")
    session = await asyncio.to_thread(service.directory.open_session, approver, request.app.state.session_hours)
    response = RedirectResponse("/inbox", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        httponly=True,
        samesite="lax",
        path="/inbox",
        secure=request.app.state.cookie_secure,
        max_age=int(request.app.state.session_hours * 3600),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/inbox")
    return response


@router.post("/logout")
async def logout(session: Session, service: ServiceDep, csrf: Annotated[str, Form()] = "") -> Response:
    _, token = session
    if _check_csrf(token, csrf):
        await asyncio.to_thread(service.directory.close_session, token)
    response = RedirectResponse("/inbox/login?n=loggedout", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/inbox")
    return response


@router.get("")
async def pending(request: Request, session: Session, service: ServiceDep) -> HTMLResponse:
    approver, token = session
    records = await service.inbox(approver)
    return _page(
        request, "list.html", me=approver, csrf=csrf_token(token), approvals=records, title="Pending", history=False
    )


@router.get("/history")
async def history(request: Request, session: Session, service: ServiceDep) -> HTMLResponse:
    approver, token = session
    records = await service.history(approver)
    writes = {r.approval_id: await service.write_of(r) for r in records}
    return _page(
        request,
        "list.html",
        me=approver,
        csrf=csrf_token(token),
        approvals=records,
        writes=writes,
        title="History",
        history=True,
    )


def _detail(request: Request, approver: Approver, token: str, record: ApprovalRecord, **extra: Any) -> HTMLResponse:
    status_code = extra.pop("status_code", 200)
    return _page(
        request,
        "detail.html",
        status_code,
        me=approver,
        csrf=csrf_token(token),
        a=record,
        notice=NOTICES.get(request.query_params.get("n", "")),
        **extra,
    )


@router.get("/approvals/{approval_id:path}")
async def detail(approval_id: str, request: Request, session: Session, service: ServiceDep) -> HTMLResponse:
    approver, token = session
    try:
        record = await service.visible(approver, approval_id)
    except DecisionRefused as exc:
        return _page(request, "error.html", exc.http_status, me=approver, csrf=csrf_token(token), error=exc.message)
    return _detail(request, approver, token, record, write=await service.write_of(record))


@router.post("/approvals/{approval_id:path}/decide")
async def decide(
    approval_id: str,
    request: Request,
    session: Session,
    service: ServiceDep,
    action: Annotated[str, Form()],
    payload_hash: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    approver, token = session
    if not _check_csrf(token, csrf):
        return _page(
            request,
            "error.html",
            403,
            me=approver,
            csrf=csrf_token(token),
            error="The form is missing its CSRF token or it is wrong; reload the page and try again.",
        )
    try:
        if action == "approve":
            decided = await service.approve(approval_id, approver, payload_hash, reason)
            notice = "approved" if decided.decision.final else "vote"
        elif action == "deny":
            await service.deny(approval_id, approver, payload_hash, reason)
            notice = "denied"
        else:
            return _page(request, "error.html", 400, me=approver, csrf=csrf_token(token), error="Unknown action.")
    except DecisionRefused as exc:
        try:
            record = await service.visible(approver, approval_id)
        except DecisionRefused:
            return _page(request, "error.html", exc.http_status, me=approver, csrf=csrf_token(token), error=exc.message)
        return _detail(request, approver, token, record, error=exc.message, status_code=exc.http_status, reason=reason)
    return RedirectResponse(f"/inbox/approvals/{quote(approval_id, safe='')}?n={notice}", status_code=303)
