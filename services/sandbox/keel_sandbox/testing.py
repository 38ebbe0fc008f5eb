"""A sandbox server in a subprocess, for the integration tests of the sandbox and of its clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from keel_sandbox.db import normalize_db_url

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class SandboxStartError(RuntimeError):
    pass


@dataclass
class SandboxProcess:
    base_url: str
    db_url: str
    process: subprocess.Popen[bytes]
    engine: Engine
    log_path: Path

    def count(self, table: str, **where: Any) -> int:
        """Rows in `table` matching `where`, read straight from the server's database rather than its API."""
        clause = " AND ".join(f"{column} = :{column}" for column in where) or "1 = 1"
        with self.engine.connect() as connection:
            # Table and column names come from the test's own code, never from a request.
            query = text(f"SELECT count(*) FROM {table} WHERE {clause}")  # noqa: S608
            return int(connection.execute(query, where).scalar_one())

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (a graceful shutdown), then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.engine.dispose()
        return self.process.returncode


def start_sandbox(db_url: str, workdir: Path, *, log_level: str = "warning") -> SandboxProcess:
    """Start `python -m keel_sandbox` on a free loopback port and wait until it answers `/healthz`."""
    port_file = workdir / "sandbox.port"
    log_path = workdir / "sandbox.log"
    port_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "keel_sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--db-url",
        db_url,
        "--log-level",
        log_level,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=os.environ.copy())
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise SandboxStartError(f"sandbox did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{int(port_file.read_text(encoding='utf-8'))}"
    sandbox = SandboxProcess(base_url, db_url, process, create_engine(normalize_db_url(db_url)), log_path)
    try:
        httpx.get(f"{base_url}/healthz", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        sandbox.stop()
        raise SandboxStartError(f"sandbox is not healthy: {exc}\n{sandbox.log()}") from exc
    return sandbox
