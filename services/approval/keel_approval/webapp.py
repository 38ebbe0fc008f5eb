"""The approval service's HTTP application: JSON API (documented by OpenAPI) and the web inbox."""

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from keel_approval import api, inbox
from keel_approval.domain import DecisionRefused
from keel_approval.service import ApprovalService
from keel_approval.throttle import GuessThrottle
from keel_shared.http import BodyLimit

#: Largest request body accepted: a decision is a hash, a role and a reason of at most 4,096 characters
#: (up to 4 bytes each in UTF-8, more when JSON-escaped), a login form is two tokens. Anything larger is
#: refused with 413 before it is read whole.
MAX_REQUEST_BODY_BYTES = 32 * 1024

# No scripts at all; inline styles only; forms post to this origin only; never framed (clickjacking).
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def create_app(
    service: ApprovalService | None,
    *,
    cookie_secure: bool = False,
    session_hours: float = 8.0,
    throttle: GuessThrottle | None = None,
) -> FastAPI:
    """`service` None builds the same routes without a backend: enough to write the OpenAPI document."""
    app = FastAPI(
        title="Keel approval service",
        version="1",
        description=(
            "Approve or deny writes that Keel's router parked for approval. Every decision binds to the "
            "`payload_hash` of the exact payload shown, and only approvers holding a role the request names "
            "may decide; whoever asked for the write never may. Authenticate with `Authorization: Bearer "
            "<approver token>`."
        ),
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BODY_BYTES)
    app.state.service = service
    app.state.cookie_secure = cookie_secure
    app.state.session_hours = session_hours
    # Wrong tokens per client: too many and the client gets 429 for a while (keel_approval.throttle).
    app.state.throttle = throttle or GuessThrottle()
    app.include_router(api.router)
    app.include_router(inbox.router)

    @app.exception_handler(DecisionRefused)
    async def refused(request: Request, exc: DecisionRefused) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.http_status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 413:
            return JSONResponse({"error": "too_large", "detail": exc.detail}, status_code=413)
        return await http_exception_handler(request, exc)

    @app.exception_handler(inbox.LoginRequired)
    async def login_required(request: Request, exc: inbox.LoginRequired) -> Response:
        return RedirectResponse("/inbox/login", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        about_reason = [e.get("type") for e in errors if "reason" in map(str, e.get("loc", ()))]
        code = "invalid"
        if "string_too_long" in about_reason:
            code = "reason_too_long"
        elif about_reason:
            code = "reason_required"
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
        return JSONResponse({"error": code, "detail": detail}, status_code=422)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.url.path.startswith(("/inbox", "/api")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/inbox", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok" if app.state.service is not None else "no backend"}

    return app
