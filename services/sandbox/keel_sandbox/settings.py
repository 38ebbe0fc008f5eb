"""Runtime configuration, read from the environment and overridable from the command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

ENV_DB_URL = "KEEL_SANDBOX_DB_URL"
ENV_HOST = "KEEL_SANDBOX_HOST"
ENV_PORT = "KEEL_SANDBOX_PORT"

# Relative on purpose: the sandbox keeps its state next to the project it serves, like the rest of `.keel/`.
DEFAULT_DB_URL = "sqlite:///.keel/sandbox.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class SandboxSettings:
    db_url: str = DEFAULT_DB_URL
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxSettings:
        env = os.environ if environ is None else environ
        port_text = env.get(ENV_PORT)
        try:
            port = DEFAULT_PORT if port_text in (None, "") else int(port_text)
        except ValueError:
            raise ValueError(f"{ENV_PORT} must be an integer, got {port_text!r}") from None
        return cls(
            db_url=env.get(ENV_DB_URL) or DEFAULT_DB_URL,
            host=env.get(ENV_HOST) or DEFAULT_HOST,
            port=port,
        )

    def with_overrides(
        self, *, db_url: str | None = None, host: str | None = None, port: int | None = None
    ) -> SandboxSettings:
        return replace(
            self,
            db_url=self.db_url if db_url is None else db_url,
            host=self.host if host is None else host,
            port=self.port if port is None else port,
        )
