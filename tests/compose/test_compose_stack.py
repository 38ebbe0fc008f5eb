"""The engine tier: build every image locally, `docker compose up --wait` with two executors, and run the
demo end to end through the published NATS port. Skipped, with the reason printed, when no Docker engine
is reachable (CI starts one with infra/ci/docker-up.sh)."""

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from keel_cli.client import KeelClient
from tests.compose.conftest import ROOT, engine_problem, note_skip, run_compose

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def compose_stack() -> Iterator[dict[str, str]]:
    problem = engine_problem()
    if problem is not None:
        note_skip(problem)
        pytest.skip(problem)
    started = time.monotonic()
    build = subprocess.run(
        [str(ROOT / "infra" / "docker" / "build-bases.sh")], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert build.returncode == 0, build.stderr[-4000:]
    project = f"keel-test-{secrets.token_hex(3)}"
    env = {"KEEL_PG_PASSWORD": secrets.token_urlsafe(18), "COMPOSE_PROJECT_NAME": project}
    timings = {"bases_s": f"{time.monotonic() - started:.0f}"}
    try:
        up = run_compose(
            "up", "-d", "--build", "--wait", "--wait-timeout", "300", "--scale", "executor=2", env=env, timeout=900
        )
        if up.returncode != 0:
            logs = run_compose("logs", "--no-color", "--tail", "40", env=env, timeout=60)
            raise AssertionError(f"compose up failed:\n{up.stderr[-4000:]}\n{logs.stdout[-8000:]}")
        timings["up_s"] = f"{time.monotonic() - started:.0f}"
        port = run_compose("port", "nats", "4222", env=env).stdout.strip()
        yield {**env, "nats_url": f"nats://{port}", **timings}
    finally:
        run_compose("down", "-v", "--remove-orphans", "-t", "10", env=env, timeout=300)


def test_the_stack_comes_up_healthy_with_two_executors(compose_stack: dict[str, str]) -> None:
    result = run_compose("ps", "--format", "json", env=compose_stack)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_service: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_service.setdefault(row["Service"], []).append(row)
    assert len(by_service["executor"]) == 2
    for name in ("nats", "postgres", "router", "executor", "approval", "audit", "prometheus"):
        for row in by_service[name]:
            assert row["Health"] == "healthy", (name, row)


def test_a_demo_run_reaches_done_through_the_published_nats_port(compose_stack: dict[str, str]) -> None:
    async def go() -> str:
        async with await KeelClient.connect(compose_stack["nats_url"]) as keel:
            answer = await keel.trigger(
                "demo", {"customer": "ACME"}, f"compose-{secrets.token_hex(4)}", wait=True, timeout=120
            )
            return str(answer.status)

    assert asyncio.run(go()) == "done"
    print(f"compose engine tier timings: {compose_stack['bases_s']}s bases, {compose_stack['up_s']}s to healthy")
