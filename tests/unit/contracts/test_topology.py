"""The topology table is the one statement of who emits, stores and consumes what: provisioning, the
NATS permissions, the services' subscribers and the AsyncAPI documents all equal it (decision 026)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_approval.app import build as build_approval
from keel_audit.service import build as build_audit
from keel_contracts import subjects as s
from keel_contracts import topology
from keel_contracts.codec import WrongEmitter, check_emitter
from keel_contracts.events import EVENT_TYPES
from keel_executor.app import build as build_executor
from keel_router.app import build as build_router
from keel_shared.provisioning import durables
from keel_shared.security import permissions
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings
from tests.conftest import ROOT


@pytest.fixture
def settings(tmp_path: Path) -> KeelSettings:
    return KeelSettings(workflows_dir=ROOT / "workflows", data_dir=tmp_path)


def test_every_event_type_has_exactly_one_rightful_emitter() -> None:
    assert [route.type for route in topology.EVENTS] == list(dict.fromkeys(route.type for route in topology.EVENTS))
    assert set(topology.EMITTER_OF) == set(EVENT_TYPES)
    assert set(topology.EMITTER_OF.values()) <= set(s.SERVICES)


def test_provisioned_durables_are_the_tables(settings: KeelSettings) -> None:
    provisioned = {spec.config.durable_name: spec for spec in durables(settings)}
    assert set(provisioned) == {d.name for d in topology.DURABLES}
    for d in topology.DURABLES:
        config = provisioned[d.name].config
        filters = config.filter_subjects or [config.filter_subject]
        assert provisioned[d.name].stream == d.stream
        assert sorted(filters) == sorted(d.filter_subjects), d.name
        assert config.ack_policy is not None and config.ack_policy.value == "explicit"
        assert config.ack_wait == settings.ack_wait_seconds
        assert config.max_ack_pending == d.max_ack_pending
        assert config.max_deliver is None  # the consume guard dead-letters after KEEL_MAX_DELIVERIES


def test_each_identity_may_publish_exactly_the_event_types_it_emits(settings: KeelSettings) -> None:
    rendered = permissions(settings)
    assert set(rendered) == set(topology.IDENTITIES)
    for identity, perms in rendered.items():
        if identity == topology.ADMIN:
            continue
        events = {subject for subject in perms.publish_allow if subject.startswith("keel.run.")}
        assert events == {route.subject for route in topology.emitted_by(identity)}, identity
        commands = {subject for subject in perms.publish_allow if subject.startswith(("keel.cmd.", "keel.trigger."))}
        assert commands == {c.subject for c in topology.commands_of(identity) if c.stream != "KEEL_TIMERS"}
        bound = {p.split(".")[-1] for p in perms.publish_allow if ".CONSUMER.MSG.NEXT." in p and "*" not in p}
        assert bound == {d.name for d in topology.durables_of(identity)}, identity
        assert set(perms.subscribe_allow) - {f"_INBOX_{identity}.>"} == set(topology.ACCESS[identity].subscribes)


def runtimes(settings: KeelSettings) -> list[ServiceRuntime]:
    return [build_router(settings), build_executor(settings), build_approval(settings), build_audit(settings)[0]]


def test_every_services_subscribers_are_its_durables_and_their_filter_subjects(settings: KeelSettings) -> None:
    for runtime in runtimes(settings):
        bound = {(stream, durable) for stream, durable, _, _ in runtime.consumer_specs}
        assert bound == {(d.stream, d.name) for d in topology.durables_of(runtime.name)}, runtime.name
        documented = {sub._resolved_subject_string for sub in runtime.spec_broker.subscribers}  # type: ignore[attr-defined]
        wanted = {subject for d in topology.durables_of(runtime.name) for subject in d.filter_subjects}
        assert documented == wanted, runtime.name


def test_a_service_cannot_bind_another_services_durable(settings: KeelSettings) -> None:
    runtime = ServiceRuntime(s.EXECUTOR, settings)
    with pytest.raises(ValueError, match="belongs to router"):
        runtime.pull_subscriber(s.ROUTER_EVENTS_DURABLE, concurrency=1, decode=bytes)


@pytest.mark.parametrize(
    ("subject", "event_type", "ok"),
    [
        (s.event_subject("w", "r1", s.APPROVAL, "approval_granted"), "approval_granted", True),
        (s.event_subject("w", "r1", s.EXECUTOR, "approval_granted"), "approval_granted", False),
        (s.event_subject("w", "r1", s.EXECUTOR, "step_succeeded"), "approval_granted", False),
        (s.event_subject("w", "r1", s.APPROVAL, "step_succeeded"), "step_succeeded", False),
        (s.event_subject("w", "r1", s.ROUTER, "step_scheduled"), "step_scheduled", True),
        (s.event_subject("w", "r1", "rogue", "run_completed"), "run_completed", False),
        ("keel.run.w.r1.x", "run_completed", False),
    ],
)
def test_an_event_is_believed_only_under_its_rightful_emitters_subject(subject: str, event_type: str, ok: bool) -> None:
    if ok:
        check_emitter(subject, event_type)
    else:
        with pytest.raises(WrongEmitter):
            check_emitter(subject, event_type)
