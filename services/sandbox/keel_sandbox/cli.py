"""`keel sandbox ...`: a typer sub-app; `serve` starts the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keel_sandbox.server import serve as run_server
from keel_sandbox.settings import ENV_DB_URL, ENV_HOST, ENV_PORT, SandboxSettings

app = typer.Typer(
    help="Sandbox systems of record (tickets, CRM, billing, access) for demos and tests.",
    no_args_is_help=True,
)


@app.callback()
def _sandbox() -> None:
    """Sandbox systems of record (tickets, CRM, billing, access) for demos and tests."""


def serve(
    host: Annotated[str | None, typer.Option(help=f"Interface to bind (env {ENV_HOST}; default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help=f"Port to bind; 0 picks a free one (env {ENV_PORT}; default 8765).")
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            help=f"SQLAlchemy URL, sqlite:///... or postgresql://... "
            f"(env {ENV_DB_URL}; default sqlite:///.keel/sandbox.db)."
        ),
    ] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port to this file once listening.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the sandbox APIs until interrupted (Ctrl-C or SIGTERM shut it down gracefully)."""
    settings = SandboxSettings.from_env().with_overrides(host=host, port=port, db_url=db_url)
    run_server(settings, port_file=port_file, log_level=log_level)


app.command("serve")(serve)
