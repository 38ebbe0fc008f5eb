"""The dashboard process: a ServiceRuntime (NATS connection, /metrics and /healthz on the metrics port,
graceful stop) with no subscribers, a KV watch feeding the board, and the web app served by uvicorn on
the same event loop."""

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from keel_dashboard.board import RunBoard
from keel_dashboard.gauges import RunStateCollector
from keel_dashboard.settings import DashboardSettings
from keel_dashboard.watch import watch_runs
from keel_dashboard.web import WebConfig, create_app
from keel_shared.http import EmbeddedServer, start_embedded
from keel_shared.logging import get_logger
from keel_shared.service import ServiceRuntime

log = get_logger(__name__)

SERVICE = "dashboard"


class DashboardRuntime(ServiceRuntime):
    def __init__(self, settings: DashboardSettings) -> None:
        super().__init__(SERVICE, settings)
        self.board = RunBoard()
        self.http: EmbeddedServer | None = None

    def health(self) -> dict[str, Any]:
        doc = super().health()
        serving = bool(self.http is not None and self.http.started)
        doc["http_serving"] = serving
        doc["view_ready"] = self.board.ready
        if not serving:
            doc["status"] = "unavailable"
        return doc


def build(settings: DashboardSettings) -> DashboardRuntime:
    runtime = DashboardRuntime(settings)
    REGISTRY.register(RunStateCollector(runtime.board))
    tasks: list[asyncio.Task[None]] = []

    async def after_startup() -> None:
        tasks.append(asyncio.create_task(watch_runs(runtime.js, runtime.board), name="runs-watch"))
        app = create_app(
            runtime.board,
            lambda: runtime.js,
            WebConfig(approval_url=settings.approval_url, max_rows=settings.dashboard_max_rows),
        )
        # Event streams never end by themselves: give them a moment at shutdown, then close them.
        runtime.http, serving = await start_embedded(
            app,
            settings.dashboard_http_host,
            settings.dashboard_http_port,
            name="dashboard",
            graceful_shutdown_seconds=2,
        )
        tasks.append(serving)
        log.info("dashboard_serving", url=f"http://{settings.dashboard_http_host}:{settings.dashboard_http_port}/")

    async def on_shutdown() -> None:
        if runtime.http is not None:
            runtime.http.should_exit = True
        for task in tasks:
            if task.get_name() != "http":
                task.cancel()
        # uvicorn closes open event streams after its graceful timeout; the watch stops at once.
        await asyncio.gather(*tasks, return_exceptions=True)

    runtime.app.after_startup(after_startup)
    runtime.app.on_shutdown(on_shutdown)
    return runtime
