"""Runs the sandbox under uvicorn, optionally reporting the bound port (useful with port 0) to a file."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn

from keel_sandbox.app import create_app
from keel_sandbox.db import Database
from keel_sandbox.settings import SandboxSettings

# Long enough for in-flight writes to finish; short enough that a request hung by `commit_then_timeout` does
# not hold up shutdown for its whole hang.
GRACEFUL_SHUTDOWN_S = 3

logger = logging.getLogger("uvicorn.error")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, port_file: Path | None) -> None:
        super().__init__(config)
        self._port_file = port_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._port_file is not None:
            port = self.servers[0].sockets[0].getsockname()[1]
            # Written whole then renamed, so a reader polling for the file never sees a partial port.
            partial = self._port_file.with_name(self._port_file.name + ".partial")
            partial.write_text(f"{port}\n", encoding="utf-8")
            partial.replace(self._port_file)


def serve(settings: SandboxSettings, *, port_file: Path | None = None, log_level: str = "info") -> None:
    database = Database(settings.db_url)
    database.prepare()
    app = create_app(database)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # h11 is pinned because the connection drop fault closes the transport held by uvicorn's h11 cycle.
        http="h11",
        lifespan="on",
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config, port_file)
    # uvicorn sets up its loggers when it starts; before that this line would go nowhere.
    config.configure_logging()
    logger.info("keel sandbox: %s database at %s", database.backend, database.url.render_as_string())
    server.run()
