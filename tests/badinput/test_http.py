"""Hostile HTTP requests to every endpoint of every Keel service, against the real running services.

Endpoints (test_inventory.py fails when an app gains a route `ROUTES` does not list):

- approval API (docs/approval-openapi.json): GET /api/v1/me, GET /api/v1/approvals, GET /api/v1/approvals/{id},
  POST /api/v1/approvals/{id}/approve, POST /api/v1/approvals/{id}/deny;
- approval inbox: GET and POST /inbox/login, POST /inbox/logout, GET /inbox, GET /inbox/history,
  GET /inbox/approvals/{id}, POST /inbox/approvals/{id}/decide; and GET /, /healthz, /docs,
  /docs/oauth2-redirect, /openapi.json;
- dashboard: GET /, /healthz, /api/config, /api/runs, /api/runs/stream, /api/runs/{run_id},
  /api/runs/{run_id}/events, /api/events, /static/*;
- webhook ingress: POST /hooks/{source}/{workflow} (unsigned, and signed with hostile bodies), GET /healthz,
  GET /metrics;
- every process's metrics port: GET /healthz, /readyz, /metrics (any other path answers /metrics).

Requests carry hostile path segments (traversal, encodings, unicode, 5,000 characters), query strings,
headers (broken and oversized bearer tokens, session cookies, content types, Last-Event-ID, signatures,
timestamps, idempotency keys), methods and bodies (JSON of every shape, broken JSON, binary, nesting deeper
than any parser goes, form posts, bodies of several MB), with and without valid credentials. Each must be
answered below 500, with a reason when it is refused (4xx), within the client's timeout (no hang); every
service then still serves valid requests and reports itself healthy.
"""

import asyncio
import contextlib
import json
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx
import nats
import pytest
from hypothesis import strategies as st

from keel_approval.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_router.webhooks import sign
from tests.badinput.kit import (
    SLACK_SECRET,
    WEBHOOK_SECRET,
    BadInputStack,
    assert_all_alive_and_healthy,
    gather_limited,
    message_id,
    short,
)
from tests.badinput.strategies import (
    HEADERS,
    HOSTILE_FRAGMENTS,
    approval_request,
    bodies,
    draw_many,
    header_values,
    path_segments,
    query_params,
)
from tests.conftest import eventually

pytestmark = pytest.mark.integration

#: Generated requests per route.
EXAMPLES_PER_ROUTE = 25


@dataclass(frozen=True)
class Route:
    service: str  # approval, dashboard, ingress, or metrics (every process's metrics port)
    method: str
    path: str  # a template: {name} or {name:path} for a path parameter
    auth: str | None = None  # "bearer" (API token) or "session" (inbox cookie)
    stream: bool = False  # server-sent events: read the status and headers, then hang up


ROUTES: tuple[Route, ...] = (
    Route("approval", "GET", "/api/v1/me", auth="bearer"),
    Route("approval", "GET", "/api/v1/approvals", auth="bearer"),
    Route("approval", "GET", "/api/v1/approvals/{approval_id:path}", auth="bearer"),
    Route("approval", "POST", "/api/v1/approvals/{approval_id:path}/approve", auth="bearer"),
    Route("approval", "POST", "/api/v1/approvals/{approval_id:path}/deny", auth="bearer"),
    Route("approval", "GET", "/inbox/login"),
    Route("approval", "POST", "/inbox/login"),
    Route("approval", "POST", "/inbox/logout", auth="session"),
    Route("approval", "GET", "/inbox", auth="session"),
    Route("approval", "GET", "/inbox/history", auth="session"),
    Route("approval", "GET", "/inbox/approvals/{approval_id:path}", auth="session"),
    Route("approval", "POST", "/inbox/approvals/{approval_id:path}/decide", auth="session"),
    Route("approval", "GET", "/"),
    Route("approval", "GET", "/healthz"),
    Route("approval", "GET", "/docs"),
    Route("approval", "GET", "/docs/oauth2-redirect"),
    Route("approval", "GET", "/openapi.json"),
    Route("dashboard", "GET", "/"),
    Route("dashboard", "GET", "/healthz"),
    Route("dashboard", "GET", "/api/config"),
    Route("dashboard", "GET", "/api/runs"),
    Route("dashboard", "GET", "/api/runs/stream", stream=True),
    Route("dashboard", "GET", "/api/runs/{run_id}"),
    Route("dashboard", "GET", "/api/runs/{run_id}/events", stream=True),
    Route("dashboard", "GET", "/api/events", stream=True),
    Route("dashboard", "GET", "/static/{path:path}"),
    Route("ingress", "POST", "/hooks/{source}/{workflow}"),
    Route("ingress", "GET", "/healthz"),
    Route("ingress", "GET", "/metrics"),
    Route("metrics", "GET", "/healthz"),
    Route("metrics", "GET", "/readyz"),
    Route("metrics", "GET", "/metrics"),
)

HOOKS = next(route for route in ROUTES if route.path.startswith("/hooks/"))
OTHER_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "X")


@dataclass(frozen=True)
class Sent:
    route: Route
    base: str
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes

    def describe(self) -> str:
        body = self.body[:120] + (b"..." if len(self.body) > 120 else b"")
        return f"{self.method} {self.base}{self.raw_path[:200]} headers={self.headers!r:.300} body={body!r}"


@dataclass
class Credentials:
    token: str
    session: str
    approval_id: str
    run_id: str


def fill(template: str, values: dict[str, str]) -> str:
    path = template
    for name, value in values.items():
        path = path.replace("{" + name + ":path}", value).replace("{" + name + "}", value)
    return path


def params_of(template: str) -> list[str]:
    return [part.split("}")[0].split(":")[0] for part in template.split("{")[1:]]


def requests_for(route: Route, base: str, creds: Credentials) -> st.SearchStrategy[Sent]:
    """Hostile requests for one route, some of them with valid credentials (so they get past the login)."""
    known = {"approval_id": creds.approval_id, "run_id": creds.run_id, "source": "generic", "workflow": "demo"}
    segment = st.one_of(path_segments, st.sampled_from(list(known.values())), st.just(quote(creds.approval_id)))
    credentials: dict[str | None, st.SearchStrategy[dict[str, str]]] = {
        "bearer": st.just({"Authorization": f"Bearer {creds.token}"}),
        "session": st.just({"Cookie": f"{SESSION_COOKIE}={creds.session}"}),
    }
    valid_auth = credentials.get(route.auth, st.just({}))

    @st.composite
    def build(draw: st.DrawFn) -> Sent:
        values = {name: draw(segment) for name in params_of(route.path)}
        query = draw(query_params)
        raw_path = fill(route.path, values) + (f"?{urlencode(query)}" if query else "")
        headers = {**draw(HEADERS), **draw(st.one_of(st.just({}), valid_auth))}
        method = draw(st.one_of(st.just(route.method), st.just(route.method), st.sampled_from(OTHER_METHODS)))
        body = draw(bodies) if method not in ("GET", "HEAD") else b""
        return Sent(route, base, method, raw_path, headers, body)

    return build()


def signed_hooks(base: str) -> st.SearchStrategy[Sent]:
    """Webhook requests that pass the signature check, so the body is read, mapped and triggered."""

    @st.composite
    def build(draw: st.DrawFn) -> Sent:
        source = draw(st.sampled_from(["generic", "orders", "slack"]))
        body = draw(bodies)
        stamp = str(int(time.time()))
        scheme = "slack" if source == "slack" else "keel"
        secret = SLACK_SECRET if source == "slack" else WEBHOOK_SECRET
        names = (
            ("X-Slack-Signature", "X-Slack-Request-Timestamp")
            if scheme == "slack"
            else ("X-Keel-Signature", "X-Keel-Timestamp")
        )
        headers = {names[0]: sign(scheme, secret.encode(), stamp, body), names[1]: stamp}  # type: ignore[arg-type]
        key = st.one_of(header_values, st.just("k" * 513), st.just("\u202e".encode().decode("latin-1")))
        extra = draw(st.fixed_dictionaries({}, optional={"Idempotency-Key": key}))
        workflow = draw(st.one_of(st.just("demo"), path_segments))
        return Sent(HOOKS, base, "POST", f"/hooks/{source}/{workflow}", {**headers, **extra}, body)

    return build()


def signed_examples(base: str) -> list[Sent]:
    """Signed requests that once got a 500 (nesting deeper than Python parses, an intent key over the
    contract's limit) and their kin."""
    stamp = str(int(time.time()))

    def hook(body: bytes, **headers: str) -> Sent:
        signature = sign("keel", WEBHOOK_SECRET.encode(), stamp, body)
        signed = {"X-Keel-Signature": signature, "X-Keel-Timestamp": stamp, **headers}
        return Sent(HOOKS, base, "POST", "/hooks/generic/demo", signed, body)

    return [
        hook(b'{"a":' * 5000 + b"1" + b"}" * 5000),
        hook(b"[" * 900 + b"]" * 900),
        hook(b'{"text": "\\ud800"}'),  # a lone surrogate escape
        hook(b'{"n": NaN}'),
        hook(b'{"n": 1e400}'),
        hook(b'{"n": ' + b"9" * 5000 + b"}"),
        hook(b'["not", "an", "object"]'),
        hook(b'{"x": 1}', **{"Idempotency-Key": "k" * 513}),
        hook(b'{"intent_key": "' + b"k" * 600 + b'"}'),
        hook(b'{"intent_key": {"nested": true}}'),
        hook(b'{"x": "\\u202e${input}{{7*7}}"}', **{"Idempotency-Key": "\u202e".encode().decode("latin-1")}),
    ]


def response_problem(sent: Sent, response: httpx.Response | None, error: Exception | None) -> str | None:
    if error is not None:
        return f"{sent.describe()}\n    -> no answer: {type(error).__name__}: {error}"
    assert response is not None
    if response.status_code >= 500:
        return f"{sent.describe()}\n    -> {response.status_code} {response.text[:300]}"
    if response.status_code >= 400 and sent.method != "HEAD":
        text = response.text
        if not text.strip():
            return f"{sent.describe()}\n    -> {response.status_code} without a reason"
        if response.headers.get("content-type", "").startswith("application/json"):
            doc = json.loads(text)
            if not (isinstance(doc, dict) and (doc.get("error") or doc.get("detail"))):
                return f"{sent.describe()}\n    -> {response.status_code} JSON without error/detail: {text[:300]}"
    return None


async def send(http: httpx.AsyncClient, sent: Sent) -> str | None:
    url = httpx.URL(sent.base).copy_with(raw_path=sent.raw_path.encode("ascii"))
    # As bytes: a header may carry any octet a client sends (here, UTF-8 read as Latin-1).
    headers = [(name.encode(), value.encode("latin-1")) for name, value in sent.headers.items()]
    request = http.build_request(sent.method, url, headers=headers, content=sent.body or None)
    try:
        response = await http.send(request, stream=True)
    except httpx.HTTPError as exc:
        return response_problem(sent, None, exc)
    try:
        if not sent.route.stream or response.status_code != 200:
            await response.aread()
    finally:
        await response.aclose()
    return response_problem(sent, response, None)


async def login(base: str, token: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        page = await http.get("/inbox/login")
        nonce = page.cookies[LOGIN_CSRF_COOKIE]
        answer = await http.post(
            "/inbox/login", data={"token": token, "csrf": nonce}, headers={"Cookie": f"{LOGIN_CSRF_COOKIE}={nonce}"}
        )
        assert answer.status_code == 303, answer.text
        return str(answer.cookies[SESSION_COOKIE])


async def hostile_approval(stack: BadInputStack) -> tuple[str, str]:
    """A valid approval request full of markup and template syntax, pending for finance."""
    run_id = "r" + uuid.uuid4().hex[:25]
    hostile = "".join(HOSTILE_FRAGMENTS)
    request = approval_request(
        "refund",
        run_id,
        summary=f"<script>alert('summary')</script>{hostile}"[:4096],
        reason="<img src=x onerror=alert(1)>{{ 7*7 }}${input}"[:1024],
        payload={"note": hostile, "<b>key</b>": "${run.id}", "amount": 100},
        evidence={"link": "javascript:alert(1)", "ticket": "\u202eT-1"},
    )
    nc = await nats.connect(stack.nats_url)
    try:
        subject = s.event_subject(request.workflow, request.run_id, s.ROUTER, request.type)
        await nc.jetstream().publish(subject, encode(request), headers={"Nats-Msg-Id": message_id()})
    finally:
        await nc.close()
    return request.body.approval_id, run_id


async def test_hostile_requests_to_every_endpoint_get_a_clear_4xx_and_never_a_500(
    badinput_stack: BadInputStack,
) -> None:
    approval = badinput_stack.url("approval")
    token = badinput_stack.tokens["fiona"]
    approval_id, run_id = await hostile_approval(badinput_stack)
    async with httpx.AsyncClient(timeout=30) as http:
        await eventually(lambda: _visible(http, approval, token, approval_id), timeout=60)
    creds = Credentials(token, await login(approval, token), approval_id, run_id)

    sent: list[Sent] = []
    for route in ROUTES:
        bases = (
            [badinput_stack.metrics_url(label) for label in badinput_stack.labels]
            if route.service == "metrics"
            else [badinput_stack.url(route.service)]
        )
        for base in bases:
            count = EXAMPLES_PER_ROUTE if route.service != "metrics" else 4
            sent += draw_many(requests_for(route, base, creds), count)
    sent += draw_many(signed_hooks(badinput_stack.url("ingress")), 40) + signed_examples(badinput_stack.url("ingress"))
    # Bodies of several MB to every route that takes one.
    for route in ROUTES:
        if route.method == "POST":
            path = fill(route.path, {"approval_id": approval_id, "source": "generic", "workflow": "demo"})
            big = b'{"reason": "' + b"x" * 3_000_000 + b'"}'
            sent.append(
                Sent(route, badinput_stack.url(route.service), "POST", path, {"Content-Type": "application/json"}, big)
            )

    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10)) as http:
        problems = [p for p in await gather_limited((send(http, one) for one in sent), limit=8) if p]
    assert not problems, f"{len(problems)} of {len(sent)} requests mishandled:\n{short(problems)}"

    # Still serving: valid requests get valid answers.
    async with httpx.AsyncClient(timeout=30) as http:
        me = await http.get(f"{approval}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["name"] == "fiona", me.text
        runs = await http.get(f"{badinput_stack.url('dashboard')}/api/runs")
        assert runs.status_code == 200 and "runs" in runs.json()
        stamp = str(int(time.time()))
        body = json.dumps({"customer": "after-http"}).encode()
        hook = await http.post(
            f"{badinput_stack.url('ingress')}/hooks/generic/demo",
            content=body,
            headers={"X-Keel-Signature": sign("keel", WEBHOOK_SECRET.encode(), stamp, body), "X-Keel-Timestamp": stamp},
        )
        assert hook.status_code == 200 and hook.json()["run_id"], hook.text
    await assert_all_alive_and_healthy(badinput_stack)


async def _visible(http: httpx.AsyncClient, base: str, token: str, approval_id: str) -> bool:
    response = await http.get(
        f"{base}/api/v1/approvals/{quote(approval_id)}", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code == 200


async def test_hostile_content_in_an_approval_is_shown_as_text_never_as_markup(badinput_stack: BadInputStack) -> None:
    approval = badinput_stack.url("approval")
    token = badinput_stack.tokens["fiona"]
    approval_id, _ = await hostile_approval(badinput_stack)
    async with httpx.AsyncClient(timeout=30) as http:
        await eventually(lambda: _visible(http, approval, token, approval_id), timeout=60)
        session = await login(approval, token)
        page = await http.get(
            f"{approval}/inbox/approvals/{quote(approval_id, safe='')}",
            headers={"Cookie": f"{SESSION_COOKIE}={session}"},
        )
        detail = await http.get(
            f"{approval}/api/v1/approvals/{quote(approval_id)}", headers={"Authorization": f"Bearer {token}"}
        )
    assert page.status_code == 200, page.text
    for raw in ("<script>", "<img src=x", "<b>key</b>", 'href="javascript:'):
        assert raw not in page.text, f"{raw!r} rendered as markup"
    assert "&lt;script&gt;" in page.text
    # The API gives the exact strings back, templates and all, unevaluated.
    assert detail.json()["payload"]["<b>key</b>"] == "${run.id}"
    assert detail.json()["summary"].startswith("<script>alert('summary')</script>")


async def test_an_idle_or_half_sent_connection_never_blocks_a_health_check(badinput_stack: BadInputStack) -> None:
    """A client that connects and sends half a request (or nothing) must not stall /healthz for everyone."""
    targets = [badinput_stack.metrics_url(label) for label in badinput_stack.labels]
    targets += [badinput_stack.url("approval"), badinput_stack.url("dashboard")]
    stalled: list[socket.socket] = []
    try:
        for base in targets:
            port = httpx.URL(base).port
            assert port is not None
            for partial in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /" + b"a" * 70_000):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if partial:
                    sock.sendall(partial)
                stalled.append(sock)
        async with httpx.AsyncClient(timeout=10) as http:
            for base in targets:
                response = await asyncio.wait_for(http.get(base + "/healthz"), 15)
                assert response.status_code == 200, f"{base}: {response.status_code}"
    finally:
        for sock in stalled:
            sock.close()
    await assert_all_alive_and_healthy(badinput_stack)


async def test_malformed_http_on_the_wire_is_refused_and_the_server_keeps_serving(
    badinput_stack: BadInputStack,
) -> None:
    targets = [badinput_stack.metrics_url(label) for label in badinput_stack.labels]
    targets += [badinput_stack.url("approval"), badinput_stack.url("dashboard")]
    garbage = (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 100_000 + b"\r\n\r\n",
        b"POST /api/v1/me HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /inbox/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    )

    async def exchange(base: str, raw: bytes) -> str | None:
        port = httpx.URL(base).port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with contextlib.suppress(OSError):  # the server may already have hung up: that is an answer too
                writer.write(raw)
                writer.write_eof()  # nothing more is coming: the server answers or closes now
            try:
                answer = await asyncio.wait_for(reader.read(200), 30)
            except OSError:
                answer = b""
        finally:
            writer.close()
        status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
        # 505 is the protocol's own answer to an HTTP version nobody speaks; any other 5xx is a fault.
        if status.startswith(b"5") and status != b"505":
            return f"{base}: {answer[:120]!r} to {raw[:60]!r}"
        return None

    problems = await asyncio.gather(*(exchange(base, raw) for base in targets for raw in garbage))
    assert not [p for p in problems if p], problems
    await assert_all_alive_and_healthy(badinput_stack)


@pytest.mark.parametrize("last_event_id", [str(2**64 - 1), str(2**64), "9" * 400])
async def test_a_resume_point_beyond_any_stream_sequence_is_refused_not_retried_for_ever(
    badinput_stack: BadInputStack, last_event_id: str
) -> None:
    url = f"{badinput_stack.url('dashboard')}/api/runs/r{uuid.uuid4().hex[:25]}/events"
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(url, headers={"Last-Event-ID": last_event_id})
        after = await http.get(url, params={"after": last_event_id})
    for answer in (response, after):
        assert answer.status_code == 400, answer.text[:300]
        assert "sequence" in answer.json()["detail"]
