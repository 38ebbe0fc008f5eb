"""docker-compose.yml, validated offline in every test run: the compose binary's own schema and
reference checks, then the project's rules for a safe, self-contained deployment."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose.conftest import COMPOSE_FILE, ROOT, compose_binary, run_compose

#: Offline: no engine is asked anything (the socket does not exist).
OFFLINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "KEEL_PG_PASSWORD": "offline-check"}
#: One-shot services: they run to completion, so a health check means nothing for them.
ONE_SHOTS = {"init"}
KEEL_SERVICES = {"router", "executor", "approval", "audit"}
SECRET_WORDS = re.compile(r"(password|secret|token|private|seed|api_?key)", re.IGNORECASE)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = run_compose("config", "--format", "json", env=OFFLINE)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def test_the_compose_binary_accepts_the_file() -> None:
    assert compose_binary().is_file()
    result = run_compose("config", "-q", env=OFFLINE)
    assert result.returncode == 0, result.stderr


def test_the_compose_binary_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards the guard: the binary itself, not the always-0 wrapper, is what the tests call.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  app:\n    image: x:1\n    bogus_key: 1\n")
    import subprocess

    result = subprocess.run(
        [str(compose_binary()), "-f", str(broken), "config", "-q"], capture_output=True, text=True, env=OFFLINE
    )
    assert result.returncode != 0 and "bogus_key" in result.stderr


def test_a_missing_password_is_refused_not_defaulted() -> None:
    result = run_compose("config", "-q", env={**OFFLINE, "KEEL_PG_PASSWORD": ""})
    assert result.returncode != 0 and "KEEL_PG_PASSWORD" in result.stderr


def test_every_service_the_issue_names_is_there(config: dict[str, Any]) -> None:
    assert {"nats", "postgres", "prometheus", "init", *KEEL_SERVICES} <= set(config["services"])


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name in ONE_SHOTS:
            assert service.get("restart", "no") == "no", name
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_keel_services_probe_healthz_on_the_metrics_port(config: dict[str, Any]) -> None:
    for name in KEEL_SERVICES:
        service = config["services"][name]
        port = service["environment"]["KEEL_METRICS_PORT"]
        assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), name


def test_keel_services_wait_for_nats_and_provisioning(config: dict[str, Any]) -> None:
    for name in KEEL_SERVICES:
        depends = config["services"][name]["depends_on"]
        assert depends["nats"]["condition"] == "service_healthy", name
        assert depends["init"]["condition"] == "service_completed_successfully", name
    assert config["services"]["approval"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert config["services"]["init"]["depends_on"]["nats"]["condition"] == "service_healthy"


def test_ports_are_published_on_loopback_only_and_ephemeral(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
            assert not port.get("published"), f"{name} publishes a fixed host port {port}"


def test_the_executor_can_be_scaled(config: dict[str, Any]) -> None:
    executor = config["services"]["executor"]
    assert "container_name" not in executor and not executor.get("ports")


def test_images_are_built_locally_and_never_latest(config: dict[str, Any], raw: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        assert "build" in service, f"{name} would be pulled: no registry is reachable"
        context = Path(service["build"]["context"])
        assert context.is_dir() and (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), (name, image)
        assert service.get("pull_policy") == "never", name
    for dockerfile in (ROOT / "infra" / "docker").rglob("Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.strip().upper().startswith("FROM"):
                assert ":latest" not in line and ("local/" in line or "${BASE}" in line), (dockerfile, line)


def test_service_images_install_only_their_own_package(config: dict[str, Any]) -> None:
    packages = {name: config["services"][name]["build"]["args"]["PACKAGE"] for name in (*KEEL_SERVICES, "init")}
    assert packages == {
        "router": "keel-router",
        "executor": "keel-executor",
        "approval": "keel-approval",
        "audit": "keel-audit",
        "init": "keel-cli",
    }


def test_no_secret_values_in_the_file(raw: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    # Anything secret-looking is an interpolation from the environment (`.env`), never a literal.
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(key) or SECRET_WORDS.search(str(value)):
                assert "${KEEL_PG_PASSWORD" in str(value), (name, key, value)
    assert not re.search(r"postgres(ql)?(\+\w+)?://[^:$]+:[^$@]+@", text), "a literal password in a URL"
    assert "BEGIN" not in text and "SU" not in re.findall(r"\bSU[A-Z2-7]{50,}\b", text)


def test_mounted_config_files_exist(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])


def test_the_audit_segments_and_keys_are_on_volumes(config: dict[str, Any]) -> None:
    mounts = {v["target"]: v for v in config["services"]["audit"]["volumes"]}
    env = config["services"]["audit"]["environment"]
    assert mounts[env["KEEL_AUDIT_DIR"]]["type"] == "volume"
    keys = env.get("KEEL_AUDIT_SIGNING_KEY_FILE", f"{env['KEEL_DATA_DIR']}/audit-keys/signing.pem")
    assert mounts[str(Path(keys).parent)]["type"] == "volume"


def test_prometheus_scrapes_every_keel_service(raw: dict[str, Any]) -> None:
    prometheus = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.compose.yml").read_text())
    names = {n for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names >= KEEL_SERVICES


def test_each_signing_key_is_mounted_only_where_it_signs_and_every_keyring_read_only(config: dict[str, Any]) -> None:
    owners = {"approval-key": {"init", "approval"}, "router-key": {"init", "router"}}
    for volume, allowed in owners.items():
        mounted = {
            name
            for name, service in config["services"].items()
            for v in service.get("volumes", [])
            if v.get("source") == volume
        }
        assert mounted == allowed, (volume, mounted)
    for name in ("router", "executor", "approval"):
        env = config["services"][name]["environment"]
        trust = {v["target"]: v for v in config["services"][name]["volumes"] if v.get("source") == "trust"}
        assert str(Path(env["KEEL_APPROVAL_KEYRING_FILE"]).parent) in trust, name
        assert str(Path(env["KEEL_ROUTER_KEYRING_FILE"]).parent) in trust, name
        assert all(v.get("read_only") for v in trust.values()), name
