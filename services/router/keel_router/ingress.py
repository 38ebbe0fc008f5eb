"""The webhook ingress: `python -m keel_router.ingress`, its own small process.

`POST /hooks/{source}/{workflow}` verifies the source's signature, refuses stale and replayed requests,
maps the source's intent key and publishes the trigger exactly as `keel trigger` does; it answers
`{run_id, joined}` once the router has started or joined the run. `GET /healthz` and `GET /metrics`
serve `keel up` and Prometheus.

Replays are caught across restarts and across ingress processes: every accepted signature is created
(create-only) in the KEEL_WEBHOOK_REPLAY bucket, whose entries expire after the replay window.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, parse_json
from keel_router.webhooks import (
    SourceConfig,
    WebhookRefused,
    intent_key,
    load_sources,
    replay_key,
    resolve_source,
    trigger_input,
    verify,
)
from keel_shared.connection import connect
from keel_shared.http import BodyLimit, BodyTooLarge
from keel_shared.logging import get_logger
from keel_shared.service import setup
from keel_shared.settings import KeelSettings
from keel_shared.submitting import Refused
from keel_shared.triggers import build_trigger, submit_trigger

log = get_logger(__name__)

WEBHOOKS = Counter("keel_webhook_requests_total", "Webhook requests by source and outcome.", ["source", "outcome"])

#: Largest webhook body accepted (Slack's own events are far smaller).
MAX_BODY_BYTES = 256 * 1024

#: The HTTP status of a trigger the router refused, by its reason; any other refusal is 422. A sender that
#: gets 429 may send the same request again later (the same intent key still names the same run).
REFUSAL_STATUS = {"too_many_runs": 429, "too_large": 413}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Ingress:
    def __init__(self, settings: KeelSettings, sources: dict[str, SourceConfig]) -> None:
        self.settings = settings
        self.sources = sources
        self.nc: Client | None = None
        self.replays: KeyValue | None = None

    async def start(self) -> None:
        self.nc = await connect(self.settings, "ingress")
        self.replays = await self.nc.jetstream().key_value(s.WEBHOOK_REPLAY_BUCKET)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.drain()

    async def hook(self, request: Request) -> Response:
        source_name = request.path_params["source"]
        try:
            answer = await self._hook(request, source_name, request.path_params["workflow"])
        except WebhookRefused as exc:
            WEBHOOKS.labels(source_name[:64], exc.code).inc()
            log.info("webhook_refused", source=source_name[:64], code=exc.code, why=exc.message)
            return _error(exc.status, exc.code, exc.message)
        WEBHOOKS.labels(source_name, "joined" if answer.get("joined") else "accepted").inc()
        return JSONResponse(answer)

    async def _hook(self, request: Request, source_name: str, workflow: str) -> dict[str, Any]:
        source = resolve_source(source_name, self.sources)
        if source.config.workflows and workflow not in source.config.workflows:
            raise WebhookRefused(403, "workflow_not_allowed", f"source {source_name} may not start {workflow}")
        if not s.TOKEN_RE.fullmatch(workflow):
            raise WebhookRefused(404, "unknown_workflow", f"no workflow {workflow!r}")
        try:
            body = await request.body()
        except BodyTooLarge as exc:
            raise WebhookRefused(413, "too_large", exc.detail) from None
        signature = verify(source, request.headers, body, time.time(), self.settings.webhook_window_seconds)
        try:
            # Parsed as the trigger contract parses it: too deep, lone surrogates or NaN are refused here.
            doc = parse_json(body)
        except ContractViolation as exc:
            raise WebhookRefused(400, "malformed_json", f"the body is {exc.detail}") from None
        if isinstance(doc, dict) and doc.get("type") == "url_verification" and source.config.scheme == "slack":
            return {"challenge": doc.get("challenge")}  # Slack's one-time endpoint check
        data = trigger_input(source, doc)
        key = intent_key(source, request.headers, doc)
        try:
            trig = build_trigger(workflow, data, key, source=source_name, tenant=self.settings.tenant)
        except ValidationError as exc:  # an intent key over 512 characters, say
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise WebhookRefused(422, "invalid_input", detail) from None
        await self._remember(source_name, signature)
        assert self.nc is not None
        try:
            outcome = await submit_trigger(
                self.nc, self.nc.jetstream(), trig, timeout=self.settings.publish_timeout * 6
            )
        except Refused as exc:
            # Nothing started, so the sender may send this very request again (after a 429, it should).
            await self._forget(source_name, signature)
            raise WebhookRefused(REFUSAL_STATUS.get(exc.reason, 422), exc.reason, exc.detail) from None
        except TimeoutError:
            # The trigger is stored and will start or join its run; only the answer is late.
            return {"run_id": trig.run_id, "joined": None, "workflow": workflow, "intent_key": trig.body.intent_key}
        return {
            "run_id": outcome.run_id,
            "joined": outcome.joined,
            "workflow": workflow,
            "intent_key": trig.body.intent_key,
        }

    async def _remember(self, source: str, signature: str) -> None:
        """Create-only: a second request with a signature already seen inside the window is a replay."""
        assert self.replays is not None
        try:
            await self.replays.create(replay_key(source, signature), b"1")
        except KeyWrongLastSequenceError:
            raise WebhookRefused(409, "replayed", "this signed request was already received") from None

    async def _forget(self, source: str, signature: str) -> None:
        assert self.replays is not None
        try:
            await self.replays.delete(replay_key(source, signature))
        except Exception as exc:  # the refusal matters more; the entry expires with the window anyway
            log.warning("webhook_replay_forget_failed", source=source, error=str(exc))

    async def health(self, request: Request) -> Response:
        ok = self.nc is not None and self.nc.is_connected
        doc = {"status": "ok" if ok else "unavailable", "service": "ingress", "nats_connected": ok}
        return JSONResponse(doc, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def build_app(settings: KeelSettings) -> Starlette:
    ingress = Ingress(settings, load_sources(settings.ingress_sources_file))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingress.start()
        log.info("service_started", port=settings.ingress_http_port)
        try:
            yield
        finally:
            await ingress.stop()

    return Starlette(
        routes=[
            Route("/hooks/{source}/{workflow}", ingress.hook, methods=["POST"]),
            Route("/healthz", ingress.health, methods=["GET"]),
            Route("/metrics", ingress.metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        # A larger body is refused as soon as that is known, never read whole into memory.
        middleware=[Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)],
    )


def main() -> None:
    settings = setup("ingress")
    app = build_app(settings)
    uvicorn.run(
        app,
        host=settings.ingress_http_host,
        port=settings.ingress_http_port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
