"""The built-in HTTP adapter: `HttpTool`, which other tools build on, and the `http.*` tools.

Every call carries the attempt's identity into the system of record: `X-Keel-Run-Id`, `X-Keel-Step-Id`
and a W3C `traceparent`; a write (any method but GET/HEAD/OPTIONS/TRACE) also carries the attempt's
`Idempotency-Key`, the same on every retry. Answers and network failures are classified by
`keel_executor.classify_http`, so a tool built on `HttpTool` raises Keel's typed errors without code of
its own. Whether the whole request had been sent when a connection failed is taken from httpcore's trace
events, which is what separates "never reached the server" (transient) from "the write may have been
applied" (unknown_outcome).

A tool built on `HttpTool` looks like:

    sandbox = HttpTool(base_url_env="KEEL_SANDBOX_URL", key_lookup="/_idempotency/{key}",
                       key_lookup_field="response")

    async def refund(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return (await sandbox.request(ctx, "POST", "/billing/refunds", json=data)).object()

    refund.verify = sandbox.verify_by_key  # the read-back after an unknown outcome
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import JsonValue

from keel_executor.classify_http import SAFE_METHODS, classify_status, classify_transport_error
from keel_executor.errors import NoReadBack, PermanentError, ToolError
from keel_executor.tools.registry import ToolContext

#: Headers a workflow may set on `http.request` (lower case). Everything else is refused: credentials
#: do not belong in run data (which is stored in the event stream), and Keel's own headers must not be
#: forged. Extend with KEEL_HTTP_ALLOW_HEADERS (comma separated).
DEFAULT_ALLOWED_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "if-match", "if-none-match", "prefer", "x-request-id"}
)
#: The read timeout leaves this share of the step's timeout for classifying and reporting, so an HTTP
#: timeout is seen (and classified) by the adapter before the executor's step deadline cuts it off.
_STEP_TIMEOUT_SHARE = 0.9
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: httpx.Headers
    body: Any  # decoded JSON, or the text when the answer is not JSON

    @property
    def replayed(self) -> bool:
        """The system of record answered from its idempotency store: the write had already landed."""
        return str(self.headers.get("idempotent-replayed", "")).lower() == "true"

    def object(self) -> dict[str, JsonValue]:
        """The body as a JSON object (what a tool returns), refusing anything else."""
        if not isinstance(self.body, dict):
            raise PermanentError(f"expected a JSON object in the answer, got {type(self.body).__name__}")
        return self.body


def connection_url(name: str, prefix: str = "KEEL_HTTP") -> str:
    """The base URL of a named connection, from `<prefix>_<NAME>_URL`: workflows name systems, the
    deployment says where they are (and a workflow cannot point a tool at an arbitrary host)."""
    if not _NAME.fullmatch(name):
        raise PermanentError(f"connection name {name!r} must be letters, digits and '_'")
    var = f"{prefix}_{name.upper()}_URL"
    url = os.environ.get(var)
    if not url:
        raise PermanentError(f"connection {name!r} is not configured: set {var}")
    return url


class HttpTool:
    """An HTTP system of record: base URL, timeouts, classification, Keel's headers, and key lookup.

    - `base_url_env` (read at call time, so tests and deployments can set it late) and/or `base_url`
      (the default when the variable is unset); paths given to `request` are joined to it, absolute
      URLs are used as they are.
    - `connect_timeout` / `read_timeout` in seconds; the read timeout is also capped by the step's.
    - `business_rule_codes`: error codes that make a 422 (or any 4xx) a business_rule refusal.
    - `key_lookup`: a path template with `{key}` answering 200 when a write with that idempotency key
      landed and 404 when none did (e.g. the sandbox's `/_idempotency/{key}`); `key_lookup_field`
      picks the record out of its answer. Used by `verify_by_key`.
    - `transport`: an httpx transport (tests pass `httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        base_url_env: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        business_rule_codes: Collection[str] = (),
        key_lookup: str | None = None,
        key_lookup_field: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url
        self._base_url_env = base_url_env
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.business_rule_codes = frozenset(business_rule_codes)
        self.key_lookup = key_lookup
        self.key_lookup_field = key_lookup_field
        self._transport = transport

    def base_url(self) -> str | None:
        """`base_url_env` when it is set, else `base_url` (a default), else none."""
        if self._base_url_env is not None:
            url = os.environ.get(self._base_url_env)
            if url:
                return url
            if self._base_url is None:
                raise PermanentError(f"{self._base_url_env} is not set: where is this system?")
        return self._base_url

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        base = self.base_url()
        if base is None:
            raise PermanentError(f"{path_or_url!r} is not an absolute URL and the tool has no base URL")
        return f"{base.rstrip('/')}/{path_or_url.lstrip('/')}"

    def timeouts(self, ctx: ToolContext, read_timeout: float | None = None) -> httpx.Timeout:
        read = min(read_timeout or self.read_timeout, ctx.timeout_seconds * _STEP_TIMEOUT_SHARE)
        return httpx.Timeout(connect=min(self.connect_timeout, read), read=read, write=read, pool=read)

    async def request(
        self,
        ctx: ToolContext,
        method: str,
        path_or_url: str,
        *,
        json: JsonValue | None = None,
        params: Mapping[str, str | int | float | bool] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
        write: bool | None = None,
        ok_statuses: Collection[int] = (),
    ) -> HttpResponse:
        """One exchange. Returns the answer when it is 2xx (or listed in `ok_statuses`), else raises the
        typed error its status means. `write` defaults to "the method is not safe"."""
        method = method.upper()
        is_write = method not in SAFE_METHODS if write is None else write
        url = self.url(path_or_url)
        keel = ctx.headers()
        if not is_write:
            keel.pop("Idempotency-Key", None)  # a read has no effect to deduplicate
        sent: list[bool] = []  # [] until the transport reports on the request; then [whether it was sent]

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            # httpcore's trace events: the body is on the wire once `send_request_body` completes.
            if not sent:
                sent.append(False)
            if event.endswith(".send_request_body.complete"):
                sent[0] = True

        what = f"{method} {url.split('?', 1)[0]}"
        # A client per call: no pooled keep-alive connection can go stale between attempts (a request
        # written into a connection the server already closed is a classic way to lose a write), and a
        # tool may run on whichever event loop the executor (or a test) has.
        try:
            async with httpx.AsyncClient(timeout=self.timeouts(ctx, read_timeout), transport=self._transport) as client:
                response = await client.request(
                    method,
                    url,
                    json=json,
                    params=dict(params) if params else None,
                    headers={**(headers or {}), **keel},  # Keel's identity headers cannot be overridden
                    extensions={"trace": trace},
                )
        except httpx.TransportError as exc:
            raise classify_transport_error(
                exc, write=is_write, request_sent=sent[0] if sent else None, what=what
            ) from exc
        body = _decode(response)
        if response.status_code not in ok_statuses:
            error = classify_status(
                response.status_code,
                headers=response.headers,
                body=body,
                business_rule_codes=self.business_rule_codes,
                what=what,
                write=is_write,
            )
            if error is not None:
                raise error
        return HttpResponse(response.status_code, response.headers, body)

    async def lookup_key(self, ctx: ToolContext, key: str | None = None) -> dict[str, JsonValue]:
        """Did the write with this idempotency key (default: the attempt's) land? `{"found": true,
        "record": ...}` or `{"found": false}`; raises when the lookup itself fails (cannot tell)."""
        if self.key_lookup is None:
            raise PermanentError("this tool has no key lookup configured")
        path = self.key_lookup.replace("{key}", quote(key or ctx.idempotency_key, safe=""))
        answer = await self.request(ctx, "GET", path, ok_statuses={404})
        if answer.status == 404:
            return {"found": False}
        record = answer.body
        if self.key_lookup_field is not None:
            if not isinstance(record, dict) or self.key_lookup_field not in record:
                raise PermanentError(f"the key lookup answer has no {self.key_lookup_field!r}")
            record = record[self.key_lookup_field]
        return {"found": True, "record": record if isinstance(record, dict) else {"value": record}}

    async def verify_by_key(self, ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """A read-back for tools built on this one (`tool.verify = http_tool.verify_by_key`)."""
        return await self.lookup_key(ctx)


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


# --- the `http.*` tools -----------------------------------------------------------------------------


def _allowed_headers() -> frozenset[str]:
    extra = os.environ.get("KEEL_HTTP_ALLOW_HEADERS", "")
    return DEFAULT_ALLOWED_HEADERS | {h.strip().lower() for h in extra.split(",") if h.strip()}


def _text(data: Mapping[str, JsonValue], name: str, default: str | None = None) -> str | None:
    value = data.get(name, default)
    if value is not None and not isinstance(value, str):
        raise PermanentError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _number(data: Mapping[str, JsonValue], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PermanentError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _target(data: Mapping[str, JsonValue]) -> tuple[HttpTool, str]:
    """The tool and the URL or path a `http.*` input names: `connection` + `path`, or `url`."""
    connection, path, url = _text(data, "connection"), _text(data, "path"), _text(data, "url")
    codes = data.get("business_rule_codes", [])
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise PermanentError("business_rule_codes must be a list of strings")
    connect = _number(data, "connect_timeout")
    tool = HttpTool(
        connection_url(connection) if connection else None,
        connect_timeout=connect or 5.0,
        business_rule_codes=[str(c) for c in codes],
        key_lookup=_text(data, "verify_key_path"),
        key_lookup_field=_text(data, "verify_key_field"),
    )
    if connection:
        if url is not None:
            raise PermanentError("give either connection and path, or url")
        return tool, path or "/"
    if url is None or not url.startswith(("http://", "https://")):
        raise PermanentError("http tools need connection (+ path) or an absolute http(s) url")
    return tool, url


def _params(data: Mapping[str, JsonValue]) -> dict[str, str | int | float | bool] | None:
    params = data.get("params")
    if params is None:
        return None
    if not isinstance(params, dict) or not all(
        isinstance(v, str | int | float | bool) and v is not None for v in params.values()
    ):
        raise PermanentError("params must be an object of strings, numbers and booleans")
    return {k: v for k, v in params.items() if isinstance(v, str | int | float | bool)}


async def http_request(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`http.request`: `{method, connection + path | url, json?, params?, headers?, timeout?,
    connect_timeout?, business_rule_codes?, verify_key_path?, verify_key_field?}` ->
    `{status, body, replayed}`. Headers outside the allow-list are refused, not dropped silently."""
    method = (_text(data, "method", "GET") or "GET").upper()
    if method not in _METHODS:
        raise PermanentError(f"method {method!r} is not one of {sorted(_METHODS)}")
    tool, target = _target(data)
    headers = data.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise PermanentError("headers must be an object of strings")
    refused = sorted(h for h in headers if h.lower() not in _allowed_headers())
    if refused:
        raise PermanentError(f"headers {refused} are not allowed (allowed: {sorted(_allowed_headers())})")
    answer = await tool.request(
        ctx,
        method,
        target,
        json=data.get("json"),
        params=_params(data),
        headers={k: str(v) for k, v in headers.items()},
        read_timeout=_number(data, "timeout"),
    )
    return {"status": answer.status, "body": answer.body, "replayed": answer.replayed}


async def _verify_request(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`http.request`'s own read-back: look the attempt's idempotency key up at `verify_key_path` on the
    same system, and present a found record the way `http.request` presents an answer."""
    tool, _ = _target(data)
    if tool.key_lookup is None:
        raise NoReadBack("http.request has no verify_key_path, so it cannot look its write up")
    found = await tool.lookup_key(ctx)
    if not found.get("found"):
        return found
    return {"found": True, "record": {"status": None, "body": found.get("record"), "replayed": True}}


http_request.verify = _verify_request  # type: ignore[attr-defined]


async def http_lookup(ctx: ToolContext, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`http.lookup`, a read-back for a workflow's `verify`: GET `connection + path | url` with `params`;
    `{"found": true, "record": ...}` on 200, `{"found": false}` on 404. With `list_field` (say `items`)
    the answer is a list: found when it is not empty, the record being its first element. `record_field`
    picks the record out of a 200 answer."""
    tool, target = _target(data)
    answer = await tool.request(ctx, "GET", target, params=_params(data), ok_statuses={404})
    if answer.status == 404:
        return {"found": False}
    record: Any = answer.body
    list_field, record_field = _text(data, "list_field"), _text(data, "record_field")
    if list_field is not None:
        items = record.get(list_field) if isinstance(record, dict) else None
        if not isinstance(items, list):
            raise ToolError(f"the answer has no list at {list_field!r}")
        if not items:
            return {"found": False}
        record = items[0]
    if record_field is not None:
        if not isinstance(record, dict) or record_field not in record:
            raise ToolError(f"the answer has no {record_field!r}")
        record = record[record_field]
    return {"found": True, "record": record if isinstance(record, dict) else {"value": record}}
