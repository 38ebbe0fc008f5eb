"""One error shape for every refusal: `{"error": {"code", "message", "details"}}`.

Status codes carry the retry decision a client must make:
409 = refused by a business rule (do not retry), 422 = the request itself is invalid or reuses an
idempotency key for a different request (do not retry), 404 = no such record.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class SandboxError(Exception):
    def __init__(self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}


def not_found(kind: str, ident: object) -> SandboxError:
    return SandboxError(404, f"{kind}_not_found", f"no {kind.replace('_', ' ')} {ident!r}", {"id": ident})


def refused(code: str, message: str, **details: Any) -> SandboxError:
    return SandboxError(409, code, message, details)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": jsonable_encoder(details or {})}}


async def _sandbox_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SandboxError)
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status_code)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        error_body("validation_error", "the request is invalid", {"errors": exc.errors()}), status_code=422
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SandboxError, _sandbox_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
