"""The HTTP adapter: Keel's headers, idempotency keys on writes only, classification, key lookup."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pydantic import JsonValue

from keel_contracts.errors import ErrorClass
from keel_executor.errors import ToolError
from keel_executor.tools.http import HttpTool, http_lookup, http_request
from keel_executor.tools.registry import ToolContext

CTX = ToolContext(
    run_id="r-1",
    workflow="orders",
    step_id="refund",
    attempt=2,
    tenant="acme",
    correlation_id="0af7651916cd43dd8448eb211c80319c",
    idempotency_key="keel-r-1-refund-1",
    timeout_seconds=30,
    data_dir="/nonexistent",
)

Handler = Callable[[httpx.Request], httpx.Response]


def tool(handler: Handler, **kwargs: object) -> tuple[HttpTool, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return HttpTool("http://sor.test/api", transport=httpx.MockTransport(record), **kwargs), seen  # type: ignore[arg-type]


async def test_a_write_carries_the_idempotency_key_run_step_and_traceparent():
    http, seen = tool(lambda r: httpx.Response(201, json={"id": "re_1"}))

    answer = await http.request(CTX, "POST", "/refunds", json={"amount": 5})

    assert answer.status == 201 and answer.object() == {"id": "re_1"}
    (request,) = seen
    assert str(request.url) == "http://sor.test/api/refunds"
    assert request.headers["Idempotency-Key"] == "keel-r-1-refund-1"
    assert request.headers["X-Keel-Run-Id"] == "r-1"
    assert request.headers["X-Keel-Step-Id"] == "refund"
    assert request.headers["traceparent"] == CTX.traceparent()
    assert request.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert json.loads(request.content) == {"amount": 5}


async def test_a_read_carries_identity_but_no_idempotency_key():
    http, seen = tool(lambda r: httpx.Response(200, json={"ok": True}))

    await http.request(CTX, "GET", "/refunds", params={"charge_id": 1})

    (request,) = seen
    assert "Idempotency-Key" not in request.headers
    assert request.headers["X-Keel-Run-Id"] == "r-1"
    assert request.url.params["charge_id"] == "1"


async def test_keels_headers_cannot_be_overridden_by_the_caller():
    http, seen = tool(lambda r: httpx.Response(200, json={}))

    await http.request(CTX, "POST", "/x", headers={"Idempotency-Key": "forged", "X-Keel-Run-Id": "other"})

    assert seen[0].headers["Idempotency-Key"] == "keel-r-1-refund-1"
    assert seen[0].headers["X-Keel-Run-Id"] == "r-1"


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (429, {"Retry-After": "3"}, ErrorClass.TRANSIENT, 3.0),
        (503, {}, ErrorClass.TRANSIENT, None),
        (401, {}, ErrorClass.AUTH, None),
        (409, {}, ErrorClass.BUSINESS_RULE, None),
        (422, {}, ErrorClass.PERMANENT, None),
        (404, {}, ErrorClass.PERMANENT, None),
    ],
)
async def test_an_error_answer_raises_its_typed_error(
    status: int, headers: dict[str, str], expected: ErrorClass, retry_after: float | None
):
    http, _ = tool(lambda r: httpx.Response(status, headers=headers, json={"error": {"code": "c", "message": "m"}}))

    with pytest.raises(ToolError) as caught:
        await http.request(CTX, "POST", "/refunds", json={})

    assert caught.value.error_class is expected
    assert caught.value.retry_after == retry_after
    assert f"POST http://sor.test/api/refunds answered {status} c: m" == str(caught.value)


async def test_business_rule_codes_turn_a_422_into_a_business_rule():
    http, _ = tool(
        lambda r: httpx.Response(422, json={"error": {"code": "record_locked"}}), business_rule_codes=["record_locked"]
    )

    with pytest.raises(ToolError) as caught:
        await http.request(CTX, "PATCH", "/contacts/3", json={})

    assert caught.value.error_class is ErrorClass.BUSINESS_RULE


async def test_the_read_timeout_is_capped_below_the_steps_timeout():
    http = HttpTool("http://x", read_timeout=60)
    short = ToolContext(**{**CTX.__dict__, "timeout_seconds": 10})

    timeouts = http.timeouts(short)

    assert timeouts.read == 9.0 and timeouts.connect == 5.0


async def test_key_lookup_found_and_not_found():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/_idempotency/keel-r-1-refund-1":
            return httpx.Response(200, json={"key": "k", "response": {"id": "re_1"}})
        return httpx.Response(404, json={"error": {"code": "idempotency_key_not_found"}})

    http, seen = tool(handler, key_lookup="/_idempotency/{key}", key_lookup_field="response")

    assert await http.verify_by_key(CTX, {}) == {"found": True, "record": {"id": "re_1"}}
    assert await http.lookup_key(CTX, "other key/with slash") == {"found": False}
    assert seen[-1].url.raw_path == b"/api/_idempotency/other%20key%2Fwith%20slash"
    assert "Idempotency-Key" not in seen[0].headers


async def test_a_failing_key_lookup_raises_so_the_executor_knows_it_cannot_tell():
    http, _ = tool(lambda r: httpx.Response(500), key_lookup="/_idempotency/{key}")

    with pytest.raises(ToolError) as caught:
        await http.lookup_key(CTX)

    assert caught.value.error_class is ErrorClass.TRANSIENT


# --- real sockets: whether the request was sent decides unknown_outcome vs transient --------------------


@pytest.fixture
async def hang_up_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """Reads a whole request, then closes the connection without answering (a crash after commit)."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        received.append(head + await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


async def test_a_write_sent_in_full_and_never_answered_has_an_unknown_outcome(hang_up_server):
    url, received = hang_up_server

    with pytest.raises(ToolError) as caught:
        await HttpTool(url).request(CTX, "POST", "/refunds", json={"amount": 5})

    assert caught.value.error_class is ErrorClass.UNKNOWN_OUTCOME
    assert len(received) == 1 and b"idempotency-key: keel-r-1-refund-1" in received[0].lower()


async def test_a_read_sent_in_full_and_never_answered_is_transient(hang_up_server):
    url, _ = hang_up_server

    with pytest.raises(ToolError) as caught:
        await HttpTool(url).request(CTX, "GET", "/refunds")

    assert caught.value.error_class is ErrorClass.TRANSIENT


async def test_a_write_that_cannot_connect_is_transient():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on the port any more

    with pytest.raises(ToolError) as caught:
        await HttpTool(f"http://127.0.0.1:{port}").request(CTX, "POST", "/refunds", json={})

    assert caught.value.error_class is ErrorClass.TRANSIENT
    assert "before the request was sent" in str(caught.value)


# --- the http.request and http.lookup tools ---------------------------------------------------------


@pytest.fixture
def sor(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Route the tools' HTTP to an in-memory system named `sor` (KEEL_HTTP_SOR_URL)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/refunds" and request.method == "GET":
            key = request.url.params.get("idempotency_key")
            items = [{"id": "re_1", "idempotency_key": key}] if key == "keel-r-1-refund-1" else []
            return httpx.Response(200, json={"items": items})
        if request.url.path.startswith("/_idempotency/"):
            return httpx.Response(404)
        return httpx.Response(201, json={"id": "re_9"}, headers={"Idempotent-Replayed": "true"})

    real = httpx.AsyncClient.__init__

    def patched(self: httpx.AsyncClient, *args: object, **kwargs: object) -> None:
        kwargs["transport"] = httpx.MockTransport(handler)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.AsyncClient, "__init__", patched)
    monkeypatch.setenv("KEEL_HTTP_SOR_URL", "http://sor.test")
    return seen


async def test_http_request_posts_to_a_named_connection(sor: list[httpx.Request]):
    data: dict[str, JsonValue] = {
        "method": "post",
        "connection": "sor",
        "path": "/refunds",
        "json": {"amount": 5},
        "headers": {"Accept": "application/json"},
    }

    out = await http_request(CTX, data)

    assert out == {"status": 201, "body": {"id": "re_9"}, "replayed": True}
    assert str(sor[0].url) == "http://sor.test/refunds"
    assert sor[0].headers["Idempotency-Key"] == "keel-r-1-refund-1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"connection": "sor", "headers": {"Authorization": "Bearer x"}}, "not allowed"),
        ({"connection": "nope"}, "KEEL_HTTP_NOPE_URL"),
        ({"connection": "../etc"}, "must be letters"),
        ({"url": "file:///etc/passwd"}, "absolute http(s) url"),
        ({"connection": "sor", "url": "http://x"}, "either connection and path, or url"),
        ({"connection": "sor", "method": "BREW"}, "is not one of"),
        ({"connection": "sor", "timeout": -1}, "positive number"),
    ],
)
async def test_http_request_refuses_bad_input_as_permanent(sor: list[httpx.Request], data: dict, message: str):
    with pytest.raises(ToolError) as caught:
        await http_request(CTX, data)

    assert caught.value.error_class is ErrorClass.PERMANENT
    assert message in str(caught.value)
    assert sor == []


async def test_extra_headers_can_be_allowed_by_the_deployment(sor: list[httpx.Request], monkeypatch):
    monkeypatch.setenv("KEEL_HTTP_ALLOW_HEADERS", "X-Tenant, X-Other")

    await http_request(CTX, {"connection": "sor", "path": "/x", "headers": {"X-Tenant": "acme"}})

    assert sor[0].headers["X-Tenant"] == "acme"


async def test_http_requests_own_read_back_looks_the_key_up(sor: list[httpx.Request]):
    verify = http_request.verify  # type: ignore[attr-defined]

    answer = await verify(CTX, {"connection": "sor", "path": "/refunds", "verify_key_path": "/_idempotency/{key}"})

    assert answer == {"found": False}
    assert sor[0].url.path == "/_idempotency/keel-r-1-refund-1"


async def test_http_lookup_finds_the_first_item_of_a_list(sor: list[httpx.Request]):
    base: dict[str, JsonValue] = {"connection": "sor", "path": "/refunds", "list_field": "items"}

    found = await http_lookup(CTX, {**base, "params": {"idempotency_key": "keel-r-1-refund-1"}})
    missing = await http_lookup(CTX, {**base, "params": {"idempotency_key": "other"}})

    assert found == {"found": True, "record": {"id": "re_1", "idempotency_key": "keel-r-1-refund-1"}}
    assert missing == {"found": False}


async def test_http_request_without_a_key_path_has_no_read_back(sor: list[httpx.Request]):
    from keel_executor.errors import NoReadBack

    with pytest.raises(NoReadBack):
        await http_request.verify(CTX, {"connection": "sor", "path": "/refunds"})  # type: ignore[attr-defined]
    assert sor == []
