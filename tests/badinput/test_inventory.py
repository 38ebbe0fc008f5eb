"""The bad-input suite covers everything Keel consumes: a new durable consumer, FastStream subscriber or
HTTP route fails here until test_subjects.py / test_http.py throw garbage at it too.

What is enumerated: the durable consumers `keel init` provisions, the subscribers each service registers
when built (router, executor, approval, audit), every subscriber call anywhere in the service packages
(the dashboard and ingress have none today), and the routes of the approval, dashboard and ingress apps.
"""

import ast
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from faststream.nats.subscriber.usecases.stream_pull_subscriber import PullStreamSubscriber
from starlette.routing import Mount, Route

from keel_approval.app import build as build_approval
from keel_approval.webapp import create_app as approval_app
from keel_audit.service import build as build_audit
from keel_dashboard.board import RunBoard
from keel_dashboard.web import WebConfig
from keel_dashboard.web import create_app as dashboard_app
from keel_executor.app import build as build_executor
from keel_router.app import build as build_router
from keel_router.ingress import build_app as ingress_app
from keel_shared.provisioning import durables
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings
from tests.badinput.strategies import TARGETS
from tests.badinput.test_http import ROUTES
from tests.conftest import ROOT


@pytest.fixture
def settings(tmp_path: Path) -> KeelSettings:
    return KeelSettings(workflows_dir=ROOT / "workflows", data_dir=tmp_path)


def runtimes(settings: KeelSettings) -> list[ServiceRuntime]:
    return [build_router(settings), build_executor(settings), build_approval(settings), build_audit(settings)[0]]


def test_every_provisioned_durable_consumer_gets_garbage(settings: KeelSettings) -> None:
    provisioned = {spec.config.durable_name for spec in durables(settings)}
    assert provisioned == set(TARGETS), f"not covered: {provisioned - set(TARGETS)}; gone: {set(TARGETS) - provisioned}"


def test_every_subscriber_a_service_registers_gets_garbage_and_answers_no_reply_subject(
    settings: KeelSettings,
) -> None:
    for runtime in runtimes(settings):
        # Nothing consumes through FastStream: its broker only connects; what it would consume is
        # documented on the spec broker, one subscriber per filter subject of each consumer it starts.
        assert runtime.broker.subscribers == []
        for stream, durable, _, _ in runtime.consumer_specs:
            assert durable in TARGETS, f"{runtime.name} consumes {durable} on {stream}, not covered"
            target = TARGETS[durable]
            assert (runtime.name, stream) == (target.service, target.stream), durable
        documented = []
        for sub in runtime.spec_broker.subscribers:
            assert isinstance(sub, PullStreamSubscriber), sub
            documented.append((sub.stream.name, sub.config.durable_name))
            # Documentation only, and even so never a reply to a sender-named subject.
            assert sub._no_reply, f"{runtime.name} {sub.config.durable_name} would answer a reply subject"
        assert set(documented) == {(stream, durable) for stream, durable, _, _ in runtime.consumer_specs}
        assert len(runtime.consumer_specs) == len({durable for _, durable, _, _ in runtime.consumer_specs})


def test_no_service_registers_a_subscriber_outside_the_runtimes_enumerated_here() -> None:
    registering = set()
    for path in (ROOT / "services").glob("*/keel_*/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr
            if called in ("pull_subscriber", "subscriber"):
                registering.add(path.relative_to(ROOT).as_posix())
    assert registering == {
        "services/router/keel_router/app.py",
        "services/executor/keel_executor/app.py",
        "services/approval/keel_approval/app.py",
    }


def app_routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found = set()
    for route in routes:
        if isinstance(route, Mount):
            found.add(("GET", prefix + route.path + "/{path:path}"))
        elif isinstance(route, APIRoute | Route):
            found |= {(method, prefix + route.path) for method in route.methods or () if method != "HEAD"}
        elif hasattr(route, "original_router"):  # FastAPI's record of an included router
            found |= app_routes(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return found


def test_every_http_route_gets_hostile_requests(settings: KeelSettings) -> None:
    apps = {
        "approval": approval_app(None),
        "dashboard": dashboard_app(RunBoard(), lambda: None, WebConfig()),  # type: ignore[arg-type, return-value]
        "ingress": ingress_app(settings),
    }
    for service, app in apps.items():
        served = app_routes(app.routes)
        covered = {(r.method, r.path) for r in ROUTES if r.service == service}
        assert served == covered, f"{service}: not covered {served - covered}; gone {covered - served}"
