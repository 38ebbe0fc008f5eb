"""The dashboard's HTTP side: a static page, JSON snapshots and server-sent event streams.

Everything the page shows comes from these endpoints; the page builds its DOM with `textContent`, and
the Content-Security-Policy allows no inline script, so run data can never become markup or code.

  GET /                          the page (static HTML + /static/dashboard.js)
  GET /api/config                links the page offers (approval inbox, audit reconstruction)
  GET /api/runs                  board snapshot: counts by state and runs matching ?state=&workflow=&since=&until=
  GET /api/runs/stream           the same snapshot as SSE (`event: board`), re-sent whenever the board changes
  GET /api/runs/{run_id}         one run's view, with its output
  GET /api/runs/{run_id}/events  the run's timeline as SSE, `id:` = KEEL_EVENTS sequence; resumes after
                                 `Last-Event-ID` (or ?after=) with no gap and no duplicate
  GET /api/events                every run event (?workflow= to narrow), from now (or after Last-Event-ID)
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from nats.js import JetStreamContext

from keel_contracts.runs import RunStatus
from keel_dashboard import sse
from keel_dashboard.board import FilterError, RunBoard, RunFilter
from keel_dashboard.feed import FeedError, feed_filter, parse_last_event_id, run_events
from keel_shared.follow import StartAt

STATIC = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class WebConfig:
    approval_url: str | None = None
    max_rows: int = 500
    #: Seconds without an event before a keep-alive comment (and a liveness check of the feed's consumer).
    idle: float = 10.0
    #: Board streams send at most one snapshot per this many seconds, however busy the runs are.
    board_interval: float = 0.25


def audit_command(run_id: str) -> str:
    return f"keel audit show {run_id}"


def run_links(config: WebConfig, run_id: str) -> dict[str, str | None]:
    return {
        "approval_inbox": f"{config.approval_url.rstrip('/')}/inbox" if config.approval_url else None,
        "audit_command": audit_command(run_id),
        "events": f"/api/runs/{quote(run_id, safe='')}/events",
    }


def create_app(board: RunBoard, js: Callable[[], JetStreamContext], config: WebConfig) -> FastAPI:
    app = FastAPI(title="Keel dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def run_filter(state: str | None, workflow: str | None, since: str | None, until: str | None) -> RunFilter:
        try:
            return RunFilter.parse(state, workflow, since, until)
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "view_ready": board.ready}

    @app.get("/api/config")
    async def api_config() -> dict[str, Any]:
        return {
            "approval_inbox": f"{config.approval_url.rstrip('/')}/inbox" if config.approval_url else None,
            "approval_url": config.approval_url.rstrip("/") if config.approval_url else None,
            "audit_command": audit_command("RUN_ID"),
            "states": [state.value for state in RunStatus],
        }

    @app.get("/api/runs")
    async def api_runs(
        state: str | None = None, workflow: str | None = None, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        return board.snapshot(run_filter(state, workflow, since, until), config.max_rows)

    @app.get("/api/runs/stream")
    async def api_runs_stream(
        request: Request,
        state: str | None = None,
        workflow: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> StreamingResponse:
        flt = run_filter(state, workflow, since, until)

        async def frames() -> AsyncIterator[bytes]:
            yield sse.retry()
            seen = -1
            while not await request.is_disconnected():
                if seen != board.version:
                    seen = board.version
                    yield sse.frame(board.snapshot(flt, config.max_rows), event="board")
                    await asyncio.sleep(config.board_interval)
                elif not await board.wait_for_change(seen, config.idle):
                    yield sse.comment()

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/api/runs/{run_id}")
    async def api_run(run_id: str) -> JSONResponse:
        view = board.get(run_id)
        if view is None:
            raise HTTPException(404, "no such run (yet)")
        return JSONResponse({"run": view.model_dump(mode="json"), "links": run_links(config, run_id)})

    def event_stream(request: Request, subject_filter: str, after: int | None, start: StartAt) -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            yield sse.retry()
            async for entry in run_events(js(), subject_filter, after=after, start=start, idle=config.idle):
                if entry is None:
                    if await request.is_disconnected():
                        return
                    yield sse.comment()
                    continue
                yield sse.frame(entry, event="run_event", id=entry["seq"])

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    def resume_point(last_event_id: str | None, after: str | None) -> int | None:
        try:
            # The header wins: it is what a reconnecting EventSource sends, newer than the page's ?after=.
            return parse_last_event_id(last_event_id if last_event_id is not None else after)
        except FeedError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/api/runs/{run_id}/events")
    async def api_run_events(
        request: Request,
        run_id: str,
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[str | None, Query()] = None,
    ) -> StreamingResponse:
        try:
            subject_filter = feed_filter(run_id=run_id)
        except FeedError as exc:
            raise HTTPException(400, str(exc)) from None
        return event_stream(request, subject_filter, resume_point(last_event_id, after), StartAt.ALL)

    @app.get("/api/events")
    async def api_events(
        request: Request,
        workflow: str | None = None,
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[str | None, Query()] = None,
    ) -> StreamingResponse:
        try:
            subject_filter = feed_filter(workflow=workflow)
        except FeedError as exc:
            raise HTTPException(400, str(exc)) from None
        return event_stream(request, subject_filter, resume_point(last_event_id, after), StartAt.NEW)

    return app
