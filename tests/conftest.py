"""Fixtures shared by the integration and end-to-end tests: a real nats-server from the venv on a free
loopback port, and the Keel services as real processes (so a test can SIGKILL them)."""

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from keel_cli.client import KeelClient
from keel_cli.stack import Stack
from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalGranted,
    DecisionProof,
    payload_hash,
    proof_of,
)
from keel_sandbox.testing import SandboxProcess, start_sandbox
from keel_shared import decisions, keyrings
from keel_shared.decisions import sign_decision
from keel_shared.natsserver import NatsServer
from keel_shared.settings import KeelSettings
from keel_shared.signing import Signer, signer_from_text

ROOT = Path(__file__).resolve().parent.parent
#: What most tests need; a test that exercises another service asks for it (`services=`): fewer
#: processes per test keeps the suite fast on a 2-core machine.
CORE_SERVICES = ("router", "executor")
ALL_SERVICES = ("router", "executor", "approval", "audit", "dashboard", "ingress")
TEST_WORKFLOWS = Path(__file__).resolve().parent / "workflows"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stack_workflows(tmp_path: Path) -> Path:
    """The repo's workflows plus the test workflows, in one directory."""
    target = tmp_path / "workflows"
    target.mkdir(exist_ok=True)
    for source in [*(ROOT / "workflows").glob("*.yaml"), *TEST_WORKFLOWS.glob("*.yaml")]:
        (target / source.name).write_text(source.read_text())
    return target


class StackHandle:
    """A running stack plus the things tests need around it."""

    def __init__(self, stack: Stack, ledger_url: str, data_dir: Path) -> None:
        self.stack = stack
        self.ledger_url = ledger_url
        self.data_dir = data_dir

    @property
    def nats_url(self) -> str:
        return self.stack.nats_url

    @property
    def decision_signer(self) -> Signer:
        """The stack's approval decision key (what `keel up` created), for tests that play the approval
        service."""
        return signer_from_text((self.data_dir / "keys" / "approval-signing.key").read_text())

    @property
    def schedule_signer(self) -> Signer:
        """The stack's router schedule key, for tests that play the router."""
        return signer_from_text((self.data_dir / "keys" / "router-signing.key").read_text())

    async def client(self) -> KeelClient:
        return await KeelClient.connect(self.nats_url)

    def kill(self, label: str) -> None:
        self.stack.kill(label)

    async def restart(self, label: str) -> None:
        self.stack.restart(label)
        await self.wait_healthy()

    async def wait_healthy(self) -> None:
        health = await self.stack.wait_healthy(timeout=60)
        assert all(health.values()), f"services not healthy: {health}; logs in {self.data_dir / 'logs'}"

    def logs(self) -> str:
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text()[-4000:]}")
        return "\n".join(out)


StackFactory = Callable[..., Awaitable[StackHandle]]


async def start_stack(
    root: Path,
    data_dir: Path,
    nats_url: str,
    executors: int = 1,
    env: dict[str, str] | None = None,
    services: Collection[str] = CORE_SERVICES,
    **settings: Any,
) -> StackHandle:
    """Start Keel services against `nats_url`, with the test workflows (copied under `root`) and their data
    in `data_dir`. Short ack wait and heartbeats make a crashed executor's command come back within seconds."""
    ledger_url = f"sqlite:///{data_dir / 'ledger.db'}"
    provisioning = KeelSettings(**{"ack_wait_seconds": 3, **settings})
    extra_env = {
        "KEEL_DEMO_LEDGER_URL": ledger_url,
        "KEEL_HEARTBEAT_SECONDS": "0.5",
        "KEEL_ACK_WAIT_SECONDS": str(provisioning.ack_wait_seconds),
        "KEEL_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    stack = Stack(
        data_dir,
        nats_port=0,
        http_port=0,
        nats_url=nats_url,
        executors=executors,
        workflows_dir=stack_workflows(root),
        extra_env=extra_env,
        settings=provisioning,
        services=services,
    )
    await stack.start()
    handle = StackHandle(stack, ledger_url, data_dir)
    try:
        await handle.wait_healthy()
    except BaseException:
        await asyncio.to_thread(stack.stop, 10)
        raise
    return handle


@pytest.fixture
async def keel_stack(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Start router + executor(s) against the test server (see `start_stack`)."""
    stacks: list[StackHandle] = []

    async def start(
        executors: int = 1,
        env: dict[str, str] | None = None,
        services: Collection[str] = CORE_SERVICES,
        **settings: Any,
    ) -> StackHandle:
        handle = await start_stack(
            tmp_path, tmp_path / f"stack{len(stacks)}", nats_server.url, executors, env, services, **settings
        )
        stacks.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in stacks:
            await asyncio.to_thread(handle.stack.stop, 10)


async def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll until `check()` returns something truthy. The timeout is a hang guard, not a speed claim:
    it is generous so a slow machine never fails a test."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(interval)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """The sandbox systems of record (tickets, CRM, billing, access) as a real server on a SQLite file."""
    workdir = tmp_path / "sandbox"
    workdir.mkdir()
    running = start_sandbox(f"sqlite:///{workdir / 'sandbox.db'}", workdir)
    try:
        yield running
    finally:
        running.stop()


POSTGRES_HOST = "127.0.0.1:5432"
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


def postgres_schema_url(prefix: str) -> Iterator[str]:
    """A fresh schema in the shared `test` database, first on the server's search_path; dropped after.
    Skips (with the reason printed) when PostgreSQL is unreachable.

    A schema rather than a database: CREATE DATABASE copies template1 and fails while anyone else is
    connected to it, which other suites on the same server may well be.
    """
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_HOST} (user postgres, database test): {exc}".strip()
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"postgresql+psycopg://postgres@{POSTGRES_HOST}/test?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


CHROMIUM = Path("/usr/bin/chromium")
# What lets Chromium run headless as root in a VM: no sandbox, no GPU, no background traffic (the
# network is closed, and its connection attempts would only add noise).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, driven by Playwright with `executable_path` (.ci/run installs it)."""
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install -y chromium`) for browser tests"
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return CHROMIUM


os.environ.setdefault("KEEL_LOG_FORMAT", "json")


#: The approval service's decision key in tests that build grants themselves (a keyring of
#: `trusting(TEST_DECISION_SIGNER)` accepts them).
TEST_DECISION_SIGNER = Signer.generate()
#: The router's schedule key in tests that build a router in process.
TEST_SCHEDULE_SIGNER = Signer.generate()


def trusting(*signers: Signer) -> keyrings.Keyring:
    """An approval keyring that trusts these decision keys."""
    return keyrings.trusting(decisions.PURPOSE, *signers)


def signed_grant(
    *,
    run_id: str,
    step_id: str,
    payload: dict[str, Any],
    approval_id: str = "ap-1",
    workflow: str = "orders",
    tenant: str = "default",
    signer: Signer = TEST_DECISION_SIGNER,
    denied: bool = False,
) -> DecisionProof:
    """A decision on the write `step_id` of `run_id` with this payload, signed as the approval service signs."""
    env: dict[str, Any] = {
        "run_id": run_id,
        "workflow": workflow,
        "tenant": tenant,
        "correlation_id": "c-1",
        "actor": "approval",
        "dedupe_key": f"{run_id}:approval:{approval_id}:decided",
    }
    body = ApprovalDecisionBody(
        approval_id=approval_id,
        payload_hash=payload_hash(payload),
        decided_by=["fiona"],
        roles=["finance"],
        decided_at=datetime.now(UTC),
    )
    event = ApprovalDenied(**env, body=body) if denied else ApprovalGranted(**env, body=body)
    proof = proof_of(sign_decision(signer, event, step_id))
    assert proof is not None
    return proof
