"""Mapping HTTP answers and network failures to Keel's error classes, for any HTTP-speaking adapter.

The rules (docs/adapters.md has the table):

- 2xx: success. 1xx/3xx: permanent (redirects are not followed: a write must not land somewhere else).
- 408, 429 and every 5xx: transient; a Retry-After (seconds or an HTTP date) on 429 or 503 is kept so
  the router waits at least that long. Except a 500 answering a write: an internal error may come after
  the write committed (the sandbox's `commit_then_500`), so it is unknown_outcome, for a read-back to
  settle. 502/503/504 say the request was not processed (gateway, overload), so they stay transient.
- 401, 403: auth (a human must fix credentials or grants; retrying cannot help).
- 409 Conflict, 423 Locked: business_rule (the system refused on its own rules: locked record, illegal
  transition, already exists). 422 is permanent (the request is invalid), unless its error code is one
  the caller lists as a business rule (some APIs answer business refusals with 422).
- any other 4xx: permanent.
- failing to connect, or failing before the whole request was sent: transient (nothing reached the
  server as a request it could act on).
- no clean answer after the whole request was sent: on a write, unknown_outcome (the server may have
  applied it); on a read, transient.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from keel_executor.errors import (
    AuthError,
    BusinessRuleError,
    PermanentError,
    ToolError,
    TransientError,
    UnknownOutcomeError,
)

#: A Retry-After longer than this is treated as this: a confused or hostile server must not park a run
#: for months (the workflow's retry caps and run deadline still apply on top).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0

#: Methods that do not change the server's state (RFC 9110 "safe"); anything else is a write.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date. None if absent or
    unreadable (an unreadable hint is ignored rather than trusted); a date in the past gives 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT; a zone-less one is read as UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def error_code(body: Any) -> str | None:
    """The machine-readable error code of a JSON error body: `{"error": {"code": ...}}`, `{"code": ...}`
    or `{"error": "code"}`, the shapes most APIs (and the sandbox) use."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return str(error["code"])
    if isinstance(error, str):
        return error
    code = body.get("code")
    return code if isinstance(code, str) else None


def classify_status(
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    business_rule_codes: Collection[str] = (),
    what: str = "request",
    write: bool = False,
    now: datetime | None = None,
) -> ToolError | None:
    """The error an HTTP status means, or None for success (2xx). `body` is the decoded JSON (or text)
    of the answer, used for the error code and the message; `write` says the request was a write."""
    if 200 <= status < 300:
        return None
    code = error_code(body)
    detail = f"{what} answered {status}" + (f" {code}" if code else "") + _message_of(body)
    if status == 500 and write:
        return UnknownOutcomeError(f"{detail}; the write may have been applied before the error")
    if status == 429 or status == 408 or status >= 500:
        retry_after = None
        if status in (429, 503) and headers is not None:
            retry_after = parse_retry_after(_header(headers, "retry-after"), now)
        return TransientError(detail, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(detail)
    if status in (409, 423) or (code is not None and code in business_rule_codes):
        return BusinessRuleError(detail)
    return PermanentError(detail)


def classify_transport_error(
    exc: httpx.TransportError, *, write: bool, request_sent: bool | None, what: str
) -> ToolError:
    """The error a failed exchange means. `request_sent` says whether the whole request (headers and
    body) had been handed to the network when it failed; None when the transport could not tell (a
    test transport), in which case the exception's kind decides: connect and write failures happened
    before the request was complete, read failures and protocol errors after."""
    if request_sent is None:
        request_sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout) and not (
            isinstance(exc, httpx.WriteError | httpx.WriteTimeout)
        )
    kind = type(exc).__name__
    if not request_sent:
        return TransientError(f"{what} failed before the request was sent ({kind}: {exc})")
    if write:
        return UnknownOutcomeError(
            f"{what} was sent and no clean answer came back ({kind}: {exc}); the write may have been applied"
        )
    return TransientError(f"{what} got no clean answer ({kind}: {exc})")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    if isinstance(headers, httpx.Headers):
        found: str | None = headers.get(name)
        return found
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _message_of(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        message = error.get("message") if isinstance(error, Mapping) else body.get("message") or body.get("detail")
        return f": {str(message)[:500]}" if message else ""
    if isinstance(body, str) and body.strip():
        return f": {body.strip()[:500]}"
    return ""
