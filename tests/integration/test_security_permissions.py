"""`keel init --secure`: every Keel identity may use only its own subjects, proven against a real server.

For each identity an allowed publish is stored, and each forbidden one is denied: the server reports a
permissions violation through the client's error callback (the publish itself only times out) and the
stream holds nothing on that subject. Then the whole stack runs secured, a demo run reaches done, and the
server never refused anything a service needed.
"""

import asyncio
import json
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from keel_cli.client import KeelClient
from keel_cli.stack import Stack
from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts import topology
from keel_executor.tools.demo import ledger_counts
from keel_shared.connection import inbox_prefix
from keel_shared.natsserver import NatsServer
from keel_shared.provisioning import provision
from keel_shared.security import ADMIN, CLI, DASHBOARD, IDENTITIES, INGRESS, SecureLayout, init_secure
from keel_shared.settings import KeelSettings
from tests.conftest import stack_workflows

pytestmark = pytest.mark.integration

# An object-store audit bucket is provisioned too, so the audit identity's one write is testable.
SETTINGS = KeelSettings(audit_store="object_store")
#: How long a denied publish waits for the PubAck that never comes.
DENIED_TIMEOUT = 0.3


@dataclass
class Secured:
    server: NatsServer
    layout: SecureLayout
    admin: Client


@dataclass
class As:
    """One connection under one identity, with the permission errors the server sent it."""

    name: str
    nc: Client
    errors: list[str] = field(default_factory=list)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def violations(self, subject: str) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e and f'"{subject.lower()}"' in e]

    async def wait_violation(self, subject: str, timeout: float = 3.0) -> str:
        async with asyncio.timeout(timeout):
            while not self.violations(subject):
                self._event.clear()
                await self._event.wait()
        return self.violations(subject)[0]


def secured_server(tmp_path: Path) -> tuple[NatsServer, SecureLayout]:
    layout = init_secure(tmp_path / "secure", SETTINGS)
    nats_dir = tmp_path / "nats"
    include = os.path.relpath(layout.auth_config, nats_dir)
    return NatsServer(nats_dir, extra_config=f'include "{include}"'), layout


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    server, layout = secured_server(tmp_path)
    server.start()
    admin = await nats.connect(server.url, nkeys_seed=str(layout.seed_file(ADMIN)))
    try:
        await provision(admin.jetstream(), SETTINGS)
        yield Secured(server, layout, admin)
    finally:
        await admin.close()
        server.stop()


@pytest.fixture
async def connect_as(secured: Secured) -> AsyncIterator[object]:
    opened: list[As] = []

    async def open_(name: str) -> As:
        holder: list[As] = []

        async def on_error(exc: Exception) -> None:
            holder[0].errors.append(str(exc).lower())
            holder[0]._event.set()

        nc = await nats.connect(
            secured.server.url,
            nkeys_seed=str(secured.layout.seed_file(name)),
            inbox_prefix=inbox_prefix(name),
            error_cb=on_error,
            max_reconnect_attempts=0,
        )
        who = As(name, nc)
        holder.append(who)
        opened.append(who)
        return who

    try:
        yield open_
    finally:
        for who in opened:
            await who.nc.close()


async def stored(admin: Client, stream: str, subject: str) -> bool:
    try:
        await admin.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return False
    return True


async def assert_allowed(who: As, admin: Client, stream: str, subject: str) -> None:
    ack = await who.nc.jetstream().publish(subject, b"{}", headers={"Nats-Msg-Id": f"ok-{who.name}-{subject}"})
    assert ack.stream == stream
    assert await stored(admin, stream, subject)
    assert not who.violations(subject)


async def assert_denied(who: As, admin: Client, stream: str | None, subject: str) -> None:
    with pytest.raises(NatsTimeoutError):
        await who.nc.jetstream().publish(subject, b"{}", timeout=DENIED_TIMEOUT, headers={"Nats-Msg-Id": "no"})
    await who.wait_violation(subject)
    if stream is not None:
        assert not await stored(admin, stream, subject), f"{who.name} stored {subject}"


async def assert_request_denied(who: As, subject: str, body: bytes = b"") -> None:
    with pytest.raises(NatsTimeoutError):
        await who.nc.request(subject, body, timeout=DENIED_TIMEOUT)
    await who.wait_violation(subject)


EV = s.EVENTS_STREAM
CMD = s.COMMANDS_STREAM
TIM = t.TIMERS_STREAM

#: identity -> (allowed (stream, subject) publishes, denied (stream, subject) publishes)
CASES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    s.ROUTER: (
        [
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_started")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (TIM, t.schedule_subject("demo", "r1", "retry-1")),
            (s.DLQ_STREAM, s.dlq_subject(s.ROUTER, "invalid")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
        [
            (EV, s.event_subject("demo", "r1", s.EXECUTOR, "step_succeeded")),
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_granted")),
            (EV, s.event_subject("demo", "r1", s.AUDIT, "anything")),
            (TIM, t.approval_schedule_subject("demo", "r1", "k1")),
            (s.DLQ_STREAM, s.dlq_subject(s.EXECUTOR, "invalid")),
            (f"KV_{s.CLAIMS_BUCKET}", f"$KV.{s.CLAIMS_BUCKET}.c1"),
        ],
    ),
    s.EXECUTOR: (
        [
            (EV, s.event_subject("demo", "r1", s.EXECUTOR, "step_succeeded")),
            (s.DLQ_STREAM, s.dlq_subject(s.EXECUTOR, "invalid")),
            (f"KV_{s.CLAIMS_BUCKET}", f"$KV.{s.CLAIMS_BUCKET}.c1"),
        ],
        [
            # The two named denies: no approval decision, no router event.
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_granted")),
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_denied")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_completed")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (CMD, s.trigger_subject("cli")),
            (CMD, s.router_cancel_subject("r1")),
            (CMD, s.router_input_subject("r1")),
            (TIM, t.schedule_subject("demo", "r1", "retry-1")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
    s.APPROVAL: (
        [
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_granted")),
            (TIM, t.approval_schedule_subject("demo", "r1", "k1")),
            (s.DLQ_STREAM, s.dlq_subject(s.APPROVAL, "invalid")),
        ],
        [
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_completed")),
            (EV, s.event_subject("demo", "r1", s.EXECUTOR, "step_succeeded")),
            (TIM, t.schedule_subject("demo", "r1", "retry-1")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (CMD, s.trigger_subject("cli")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
    s.AUDIT: (
        [(f"OBJ_{SETTINGS.audit_bucket}", f"$O.{SETTINGS.audit_bucket}.C.segment-1")],
        [
            # It reads the log and never writes it, nor anything that would change a run.
            (EV, s.event_subject("demo", "r1", s.AUDIT, "segment_sealed")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_completed")),
            (EV, s.event_subject("demo", "r1", s.EXECUTOR, "step_succeeded")),
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_granted")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (CMD, s.trigger_subject("cli")),
            (TIM, t.schedule_subject("demo", "r1", "retry-1")),
            (s.DLQ_STREAM, s.dlq_subject(s.AUDIT, "invalid")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
    DASHBOARD: (
        [],
        [
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_completed")),
            (CMD, s.trigger_subject("cli")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
    CLI: (
        [(CMD, s.trigger_subject("cli")), (CMD, s.router_cancel_subject("r1")), (CMD, s.router_input_subject("r1"))],
        [
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_completed")),
            (EV, s.event_subject("demo", "r1", s.APPROVAL, "approval_granted")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (TIM, t.schedule_subject("demo", "r1", "retry-1")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
    INGRESS: (
        [(CMD, s.trigger_subject("github")), (f"KV_{s.WEBHOOK_REPLAY_BUCKET}", f"$KV.{s.WEBHOOK_REPLAY_BUCKET}.sig1")],
        [
            (EV, s.event_subject("demo", "r1", s.ROUTER, "run_started")),
            (EV, s.event_subject("demo", "r1", s.ROUTER, "step_scheduled")),
            (CMD, s.router_cancel_subject("r1")),
            (f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r1"),
        ],
    ),
}

SERVICE_IDENTITIES = [name for name in IDENTITIES if name != ADMIN]


def test_init_secure_writes_private_seeds_and_keeps_them(tmp_path: Path) -> None:
    first = init_secure(tmp_path)
    assert set(first.identities) == set(IDENTITIES)
    for identity in first.identities.values():
        assert stat.S_IMODE(identity.seed_file.stat().st_mode) == 0o600
        assert identity.seed_file.read_bytes().startswith(b"SU")
        assert identity.public_key.startswith("U")
    assert stat.S_IMODE((tmp_path / "nkeys").stat().st_mode) == 0o700
    assert len({i.public_key for i in first.identities.values()}) == len(IDENTITIES)
    # Re-running never replaces a seed a running service holds.
    again = init_secure(tmp_path)
    assert {n: i.public_key for n, i in again.identities.items()} == {
        n: i.public_key for n, i in first.identities.items()
    }
    config = first.auth_config.read_text()
    assert all(i.public_key in config for i in first.identities.values())
    # Public keys only: no seed is in the server's config.
    assert not any(i.seed_file.read_text().strip() in config for i in first.identities.values())


def test_a_seed_readable_by_others_is_refused(tmp_path: Path) -> None:
    layout = init_secure(tmp_path)
    layout.seed_file(s.EXECUTOR).chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        init_secure(tmp_path)


async def test_an_unknown_key_cannot_connect(secured: Secured, tmp_path: Path) -> None:
    stranger = init_secure(tmp_path / "other").seed_file(s.ROUTER)
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(secured.server.url, nkeys_seed=str(stranger), allow_reconnect=False, connect_timeout=2)


@pytest.mark.parametrize("name", SERVICE_IDENTITIES)
async def test_each_identity_publishes_only_its_own_subjects(secured: Secured, connect_as, name: str) -> None:
    who = await connect_as(name)
    allowed, denied = CASES[name]
    for stream, subject in allowed:
        await assert_allowed(who, secured.admin, stream, subject)
    for stream, subject in denied:
        await assert_denied(who, secured.admin, stream, subject)


def forgeries(identity: str) -> list[str]:
    """Every event type the identity does not emit, under its rightful emitter's token and (for a service)
    under the identity's own token: the two ways to forge one (decision 026)."""
    subjects = []
    for route in topology.EVENTS:
        if route.emitter == identity:
            continue
        subjects.append(s.event_subject("refund", "r9", route.emitter, route.type))
        if identity in s.SERVICES:
            subjects.append(s.event_subject("refund", "r9", identity, route.type))
    return subjects


@pytest.mark.parametrize("name", SERVICE_IDENTITIES)
async def test_nats_refuses_every_event_type_an_identity_does_not_emit(secured: Secured, connect_as, name: str) -> None:
    who = await connect_as(name)
    for route in topology.emitted_by(name):
        await assert_allowed(who, secured.admin, EV, s.event_subject("refund", "r9", name, route.type))
    forged = forgeries(name)
    body = b'{"type": "approval_granted"}'
    for subject in forged:
        await who.nc.publish(subject, body, headers={"Nats-Msg-Id": f"forged-{name}-{subject}"})
    await who.nc.flush()
    for subject in forged:
        await who.wait_violation(subject)
        assert not await stored(secured.admin, EV, subject), f"{name} stored {subject}"


@pytest.mark.parametrize("name", SERVICE_IDENTITIES)
async def test_no_service_identity_can_manage_streams(secured: Secured, connect_as, name: str) -> None:
    who = await connect_as(name)
    api = "$JS.API"
    for subject in (
        f"{api}.STREAM.CREATE.ROGUE",
        f"{api}.STREAM.UPDATE.{EV}",
        f"{api}.STREAM.DELETE.{EV}",
        f"{api}.STREAM.PURGE.{EV}",
        f"{api}.STREAM.DELETE.{CMD}",
        f"{api}.STREAM.DELETE.{TIM}",
        f"{api}.STREAM.PURGE.{CMD}",
        f"{api}.CONSUMER.DELETE.{EV}.{s.EXECUTOR_DURABLE}",
        f"{api}.CONSUMER.DURABLE.CREATE.{EV}.rogue",
    ):
        await assert_request_denied(who, subject, b"{}")
    names = [info.config.name async for info in _streams(secured.admin)]
    assert {EV, CMD, TIM, s.DLQ_STREAM} <= set(names) and "ROGUE" not in names
    assert (await secured.admin.jetstream().consumer_info(EV, s.EXECUTOR_DURABLE)).name == s.EXECUTOR_DURABLE


async def _streams(admin: Client) -> AsyncIterator[object]:
    for info in await admin.jetstream().streams_info():
        yield info


async def test_services_pull_only_their_own_durables(secured: Secured, connect_as) -> None:
    executor = await connect_as(s.EXECUTOR)
    await assert_request_denied(executor, f"$JS.API.CONSUMER.MSG.NEXT.{CMD}.{s.ROUTER_TRIGGERS_DURABLE}", b"{}")
    await assert_request_denied(executor, f"$JS.API.CONSUMER.MSG.NEXT.{EV}.{s.ROUTER_EVENTS_DURABLE}", b"{}")
    await assert_request_denied(executor, f"$JS.API.CONSUMER.MSG.NEXT.{EV}.{s.APPROVAL_REQUESTS_DURABLE}", b"{}")
    approval = await connect_as(s.APPROVAL)
    await assert_request_denied(approval, f"$JS.API.CONSUMER.MSG.NEXT.{EV}.{s.EXECUTOR_DURABLE}", b"{}")
    router = await connect_as(s.ROUTER)
    await assert_request_denied(router, f"$JS.API.CONSUMER.MSG.NEXT.{EV}.{s.EXECUTOR_DURABLE}", b"{}")
    # Its own durable binds and delivers the router's run_started (a run's first step rides in it) and
    # step_scheduled events, nothing else.
    js = secured.admin.jetstream()
    started = s.event_subject("demo", "r2", s.ROUTER, "run_started")
    scheduled = s.event_subject("demo", "r2", s.ROUTER, "step_scheduled")
    await js.publish(s.event_subject("demo", "r2", s.ROUTER, "run_completed"), b"{}", headers={"Nats-Msg-Id": "e1"})
    await js.publish(started, b"{}", headers={"Nats-Msg-Id": "e2"})
    await js.publish(s.event_subject("demo", "r2", s.EXECUTOR, "step_succeeded"), b"{}", headers={"Nats-Msg-Id": "e3"})
    await js.publish(scheduled, b"{}", headers={"Nats-Msg-Id": "e4"})
    sub = await executor.nc.jetstream().pull_subscribe_bind(
        s.EXECUTOR_DURABLE, EV, inbox_prefix=f"{inbox_prefix(s.EXECUTOR)}.".encode()
    )
    msgs = await sub.fetch(4, timeout=2)
    for msg in msgs:
        await msg.ack_sync()
    assert [m.subject for m in msgs] == [started, scheduled]


async def test_audit_reads_events_with_its_own_consumers_only(secured: Secured, connect_as) -> None:
    subject = s.event_subject("demo", "r3", s.ROUTER, "run_started")
    await secured.admin.jetstream().publish(subject, b"{}", headers={"Nats-Msg-Id": "a3"})
    audit = await connect_as(s.AUDIT)
    js = audit.nc.jetstream()
    config = ConsumerConfig(
        name="audit-test", deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, mem_storage=True
    )
    await js.add_consumer(EV, config)
    sub = await js.pull_subscribe_bind("audit-test", EV, inbox_prefix=f"{inbox_prefix(s.AUDIT)}.".encode())
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.subject == subject
    await js.delete_consumer(EV, "audit-test")
    # The provisioned durables of other services are out of its reach, whatever the operation.
    for durable in (s.ROUTER_EVENTS_DURABLE, s.APPROVAL_REQUESTS_DURABLE):
        await assert_request_denied(audit, f"$JS.API.CONSUMER.DELETE.{EV}.{durable}")
        await assert_request_denied(audit, f"$JS.API.CONSUMER.MSG.NEXT.{EV}.{durable}", b"{}")
        await assert_request_denied(audit, f"$JS.API.CONSUMER.CREATE.{EV}.{durable}", b"{}")
    assert (await secured.admin.jetstream().consumer_info(EV, s.ROUTER_EVENTS_DURABLE)).name


async def test_private_inboxes_and_no_core_taps_on_run_subjects(secured: Secured, connect_as) -> None:
    for name in SERVICE_IDENTITIES:
        who = await connect_as(name)
        for subject in ("_INBOX.>", f"{inbox_prefix(s.ROUTER if name != s.ROUTER else s.EXECUTOR)}.>", "keel.>"):
            await who.nc.subscribe(subject)
            await who.nc.flush()
            message = await who.wait_violation(subject)
            assert "subscription" in message


async def test_dashboard_watches_runs_and_the_live_feed_read_only(secured: Secured, connect_as) -> None:
    dashboard = await connect_as(DASHBOARD)
    live = await dashboard.nc.subscribe(s.LIVE_ALL)
    kv = await dashboard.nc.jetstream().key_value(s.RUNS_BUCKET)
    watcher = await kv.watchall()
    admin_kv = await secured.admin.jetstream().key_value(s.RUNS_BUCKET)
    await admin_kv.put("run.r4", b'{"status":"running"}')
    await secured.admin.jetstream().publish(
        s.event_subject("demo", "r4", s.ROUTER, "run_started"), b"{}", headers={"Nats-Msg-Id": "l4"}
    )
    async with asyncio.timeout(5):
        entry = await watcher.updates(timeout=5)
        while entry is None:  # the marker that the initial values are all delivered
            entry = await watcher.updates(timeout=5)
    assert entry.key == "run.r4"
    republished = await live.next_msg(timeout=5)
    assert republished.subject == s.live_subject(s.event_subject("demo", "r4", s.ROUTER, "run_started"))
    assert (await kv.get("run.r4")).value == b'{"status":"running"}'
    await watcher.stop()
    await assert_denied(dashboard, secured.admin, f"KV_{s.RUNS_BUCKET}", f"$KV.{s.RUNS_BUCKET}.run.r5")


VIOLATION = re.compile(r"(Publish|Subscription) Violation.*")


def violations_in(log: Path) -> list[str]:
    return [m.group(0) for line in log.read_text().splitlines() if (m := VIOLATION.search(line))]


@pytest.fixture
def secure_stack(tmp_path: Path) -> Iterator[Stack]:
    data_dir = tmp_path / "stack"
    stack = Stack(
        data_dir,
        nats_port=0,
        http_port=0,
        workflows_dir=stack_workflows(tmp_path),
        extra_env={
            "KEEL_DEMO_LEDGER_URL": f"sqlite:///{data_dir / 'ledger.db'}",
            "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "1",
        },
        secure_dir=data_dir / "secure",
    )
    try:
        yield stack
    finally:
        stack.stop(10)


async def test_the_secured_stack_runs_a_demo_to_done_and_nothing_it_needs_is_denied(secure_stack: Stack) -> None:
    await secure_stack.start()
    health = await secure_stack.wait_healthy(timeout=60)
    assert all(health.values()), health
    assert secure_stack.secure is not None and secure_stack.server is not None
    # Without a key, nobody gets in.
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(secure_stack.nats_url, allow_reconnect=False, connect_timeout=2)
    seed = str(secure_stack.secure.seed_file(CLI))
    async with await KeelClient.connect(secure_stack.nats_url, nkeys_seed=seed) as keel:
        answer = await keel.trigger("demo", {"customer": "ACME"}, "secure-1", wait=True, timeout=60)
        assert answer.status == "done"
        again = await keel.trigger("demo", {"customer": "ACME"}, "secure-1")
        assert again.joined
        assert (await keel.run(answer.run_id)) is not None
        assert [e.type for e in await keel.timeline(answer.run_id)][-1] in ("run_completed", "trigger_joined")
    ledger = secure_stack.extra_env["KEEL_DEMO_LEDGER_URL"]
    assert ledger_counts(ledger, answer.run_id) == {"invocations": 1, "effects": 1}
    # Let the audit service seal what it read, then look for any refusal in the server's log.
    segments = secure_stack.data_dir / "audit" / "segments"
    for _ in range(100):
        if segments.is_dir() and any(segments.iterdir()):
            break
        await asyncio.sleep(0.1)
    assert segments.is_dir() and any(segments.iterdir()), "the audit service sealed nothing"
    assert secure_stack.server.log_file is not None
    assert violations_in(secure_stack.server.log_file) == []
    for child in secure_stack.children.values():
        errors = [
            json.loads(line).get("error", "")
            for line in child.log_path.read_text().splitlines()
            if '"nats_error"' in line
        ]
        assert not [e for e in errors if "permissions violation" in e], (child.spec.label, errors)
