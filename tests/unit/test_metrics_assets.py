"""The operator assets in infra/: Prometheus configs and alert rules pass promtool (when installed), and
the Grafana dashboard is well-formed JSON whose panels all query something."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana" / "keel-dashboard.json"
SERVICES = {"router", "executor", "approval", "audit", "dashboard", "ingress"}

#: Names in PromQL that are series, not functions or keywords: Keel's own and the client's defaults.
METRIC_RE = re.compile(r"\b((?:keel|process|python)_[a-z0-9_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is absent (apt-get install -y --no-install-recommends prometheus)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return found


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads; histogram suffixes map to the histogram's name."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in METRIC_RE.findall(expr)}


def grafana_exprs() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_prometheus_configs_pass_promtool(config: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS / config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [tool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_every_service_has_a_scrape_job(config: str) -> None:
    doc = yaml.safe_load((PROMETHEUS / config).read_text())
    jobs = {job["job_name"] for job in doc["scrape_configs"]}
    assert jobs == {f"keel-{name}" for name in SERVICES}
    assert doc["rule_files"] == ["alerts.yml"]


def test_alerts_cover_audit_lag_dead_letters_stuck_runs_and_consumer_lag() -> None:
    read = set().union(*(metric_names(e) for e in alert_exprs()))
    assert {
        "keel_audit_lag",
        "keel_dead_letters_total",
        "keel_run_oldest_state_age_seconds",
        "keel_consumer_pending_messages",
    } <= read


def test_grafana_dashboard_is_well_formed() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]) or "up{" in target["expr"], target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_metric_names_are_found_in_promql() -> None:
    names = metric_names("histogram_quantile(0.95, sum by (le) (rate(keel_tool_duration_seconds_bucket[5m])))")
    assert names == {"keel_tool_duration_seconds"}
