"""Prometheus metrics and the health endpoint every service exposes on its metrics port.

Label values are bounded sets (service, tool, error class, state, workflow): never a run id.
"""

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

MESSAGES_HANDLED = Counter(
    "keel_messages_handled_total",
    "Messages a service consumed, by consumer and outcome (ack, nak, dead_letter).",
    ["service", "consumer", "outcome"],
)
DEAD_LETTERS = Counter(
    "keel_dead_letters_total",
    "Messages refused and written to the dead-letter stream, by reason.",
    ["service", "consumer", "reason"],
)
HANDLER_SECONDS = Histogram(
    "keel_handler_duration_seconds",
    "Time spent handling one message.",
    ["service", "consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
NATS_ERRORS = Counter(
    "keel_nats_errors_total",
    "Errors reported by the NATS client (includes permission violations).",
    ["service"],
)
WRONG_EMITTER = Counter(
    "keel_wrong_emitter_total",
    "Run events a service refused to believe because their subject does not name the rightful emitter of "
    "their type (topology table), by the reading service and the emitter token and type found.",
    ["service", "emitter", "type"],
)
UNVERIFIED_DECISIONS = Counter(
    "keel_unverified_decisions_total",
    "Approval decisions a service refused because their signature did not verify against its keyring.",
    ["service"],
)
UNVERIFIED_SCHEDULES = Counter(
    "keel_unverified_schedules_total",
    "Scheduled writes an executor refused because the router's signature on them did not verify.",
    ["service"],
)
UP = Gauge("keel_service_up", "1 while the service is connected and consuming.", ["service"])

HealthCheck = Callable[[], dict[str, Any]]


class _QuietHandler(WSGIRequestHandler):
    # A connection that sends nothing (or half a request) for this long is closed, freeing its thread.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection: a client that connects and stalls holds up only itself, never the
    health checks behind it (the plain WSGIServer serves one connection at a time)."""

    daemon_threads = True


class MetricsServer:
    """Serves /metrics (Prometheus text format) and /healthz (JSON, 200 when healthy, 503 otherwise)."""

    def __init__(self, host: str, port: int, health: HealthCheck) -> None:
        self._metrics_app = make_wsgi_app()
        self._health = health
        self._server: WSGIServer = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            report = self._health()
            status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
            body = json.dumps(report).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        result: Iterable[bytes] = self._metrics_app(environ, start_response)
        return result

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
