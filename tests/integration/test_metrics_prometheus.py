"""Metrics of a running stack: every service serves what the Grafana dashboard and the alert rules
query, with bounded labels; and a real Prometheus (Debian's package) scrapes every service and answers
queries for the run counters."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from keel_cli.stack import Stack
from keel_shared.natsserver import free_port
from tests.conftest import ALL_SERVICES, StackFactory, StackHandle, eventually
from tests.unit.test_metrics_assets import PROMETHEUS, SERVICES, alert_exprs, grafana_exprs, metric_names

pytestmark = pytest.mark.integration

FAST_POLL = {"KEEL_METRICS_POLL_SECONDS": "0.5"}
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metrics_text(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def exposed_names(text: str) -> set[str]:
    """Metric families a /metrics page declares (TYPE lines, so labelled metrics with no sample yet
    count too) plus the sample names, with histogram/counter suffixes folded onto the family."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            match = SAMPLE_RE.match(line)
            if match:
                names.add(re.sub(r"_(bucket|sum|count|created)$", "", match.group(1)))
    return names


def ports(stack: Stack) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for spec in stack.specs:
        found.setdefault(spec.name, []).append(spec.metrics_port)
    return found


async def started_stack(keel_stack: StackFactory) -> tuple[StackHandle, str]:
    stack = await keel_stack(services=ALL_SERVICES, env=FAST_POLL)
    async with await stack.client() as keel:
        answer = await keel.trigger("demo", {}, "metrics-1", wait=True)
    assert answer.status == "done", stack.logs()
    return stack, answer.run_id


async def test_every_service_serves_what_dashboards_and_alerts_query(keel_stack: StackFactory) -> None:
    stack, run_id = await started_stack(keel_stack)
    by_service = ports(stack.stack)
    assert set(by_service) == SERVICES

    def pages() -> dict[str, str]:
        return {name: "\n".join(metrics_text(p) for p in service_ports) for name, service_ports in by_service.items()}

    def lag_and_state_reported() -> dict[str, str] | None:
        current = pages()
        ready = (
            'keel_consumer_pending_messages{consumer="router-triggers"' in current["router"]
            and 'keel_consumer_pending_messages{consumer="executor"' in current["executor"]
            and 'keel_runs_in_state{state="done",workflow="demo"} 1.0' in current["dashboard"]
        )
        return current if ready else None

    current = await eventually(lag_and_state_reported, timeout=60, interval=0.5)
    exposed = set().union(*(exposed_names(text) for text in current.values()))
    queried = set().union(*(metric_names(e) for e in grafana_exprs() + alert_exprs()))
    assert queried - exposed == set(), f"queried but served by no service: {sorted(queried - exposed)}"

    for name, text in current.items():
        # prometheus-client's default collectors: process and Python runtime metrics in every service.
        assert "process_resident_memory_bytes" in text and "python_gc_objects_collected_total" in text, name
        # Bounded labels: no run id anywhere in the metrics.
        assert run_id not in text, name
    assert 'keel_runs_started_total{workflow="demo"} 1.0' in current["router"]
    assert 'keel_consumer_ack_pending_messages{consumer="approval-requests"' in current["approval"]
    assert "keel_audit_lag" in current["audit"]
    assert "keel_approval_wait_seconds" in exposed_names(current["approval"])
    assert "keel_step_attempts_total{" in current["executor"]
    assert "keel_tool_duration_seconds_bucket{" in current["executor"]


def prometheus_or_skip() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "prometheus is absent (apt-get install -y --no-install-recommends prometheus)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return found


def scrape_config_for(stack: Stack, target_dir: Path) -> Path:
    """The checked-in prometheus.yml with this stack's ports (they are free ports in tests) and a 1 s
    scrape interval; jobs, rule files and everything else unchanged."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    by_service = ports(stack)
    for job in config["scrape_configs"]:
        service = job["job_name"].removeprefix("keel-")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in by_service[service]]}]
    shutil.copy(PROMETHEUS / "alerts.yml", target_dir / "alerts.yml")
    path = target_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_real_prometheus_scrapes_every_service_and_counts_the_run(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    binary = prometheus_or_skip()
    stack, _ = await started_stack(keel_stack)
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    config = scrape_config_for(stack.stack, prom_dir)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = (prom_dir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def all_targets_up() -> list[dict[str, Any]] | None:
                try:
                    targets = (await http.get(f"{api}/targets")).json()["data"]["activeTargets"]
                except (httpx.HTTPError, ValueError):
                    return None
                jobs = {t["labels"]["job"] for t in targets if t["health"] == "up"}
                return (
                    targets
                    if jobs == {f"keel-{s}" for s in SERVICES} and all(t["health"] == "up" for t in targets)
                    else None
                )

            targets = await eventually(all_targets_up, timeout=60, interval=0.5)
            assert len(targets) == len(stack.stack.specs)

            async def query(expr: str) -> list[dict[str, Any]]:
                body = (await http.get(f"{api}/query", params={"query": expr})).json()
                assert body["status"] == "success", body
                return list(body["data"]["result"])

            async def runs_started() -> list[dict[str, Any]]:
                return await query('keel_runs_started_total{workflow="demo"}')

            started = await eventually(runs_started, timeout=30, interval=0.5)
            assert [(r["metric"]["job"], float(r["value"][1])) for r in started] == [("keel-router", 1.0)]
            finished = await eventually(lambda: query('keel_runs_finished_total{state="done"}'), timeout=30)
            assert float(finished[0]["value"][1]) == 1.0
            in_state = await eventually(lambda: query('keel_runs_in_state{state="done",workflow="demo"}'), timeout=30)
            assert float(in_state[0]["value"][1]) == 1.0

            rules = (await http.get(f"{api}/rules")).json()["data"]["groups"]
            assert {g["name"] for g in rules} >= {"keel-audit", "keel-runs", "keel-consumers", "keel-dead-letters"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
