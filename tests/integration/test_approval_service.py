"""The approval service as a real process on a real nats-server, over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import nats
import pytest

from keel_contracts.approvals import ApprovalExpired, ApprovalGranted, payload_hash
from keel_shared.natsserver import NatsServer
from tests.conftest import StackFactory, StackHandle, eventually, postgres_schema_url
from tests.integration.approval_support import (
    REFUND,
    add_approvers,
    api_get,
    api_post,
    decisions,
    publish_request,
    refund_request,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None: the default SQLite store in the stack's data dir."""
    if request.param == "sqlite":
        yield None
    else:
        yield from postgres_schema_url("keel_approval")


async def start(keel_stack: StackFactory, store_url: str | None) -> tuple[StackHandle, str, str]:
    stack = await keel_stack(
        services=("router", "executor", "approval"), env={"KEEL_APPROVAL_DB_URL": store_url} if store_url else {}
    )
    url = store_url or f"sqlite:///{stack.data_dir / 'approvals.db'}"
    base = stack.stack.approval_url
    assert base is not None
    return stack, url, base


def keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_a_request_is_shown_only_to_finance_and_a_finance_approval_emits_the_grant(
    keel_stack: StackFactory, store_url: str | None
) -> None:
    stack, db_url, base = await start(keel_stack, store_url)
    tokens = add_approvers(db_url, fiona=["finance"], sam=["security"], **{"refund-bot": ["finance"]})
    path = "/api/v1/approvals/" + quote("appr-1", safe="")
    async with await nats.connect(stack.nats_url) as nc:
        await publish_request(nc, refund_request("appr-1", "run1"))
        await eventually(lambda: api_get(base, tokens["fiona"], path).status_code == 200)
        detail = api_get(base, tokens["fiona"], path).json()
        assert detail["payload"] == REFUND and detail["status"] == "pending"
        assert [d["path"] for d in detail["diff"] if d["change"] == "changed"] == ["amount"]

        listed = api_get(base, tokens["fiona"], "/api/v1/approvals").json()["approvals"]
        assert [a["approval_id"] for a in listed] == ["appr-1"]
        assert api_get(base, tokens["sam"], "/api/v1/approvals").json()["approvals"] == []

        body = {"payload_hash": payload_hash(REFUND)}
        sam = api_post(base, tokens["sam"], path + "/approve", body)
        assert sam.status_code == 403 and sam.json()["error"] == "role_mismatch"
        bot = api_post(base, tokens["refund-bot"], path + "/approve", body)
        assert bot.status_code == 403 and bot.json()["error"] == "requester_cannot_decide"

        # The CLI, with the token given explicitly (the --as file path is covered below).
        approved = keel(
            "approve",
            "appr-1",
            "--reason",
            "matches the ticket",
            "--url",
            base,
            "--json",
            env={"KEEL_APPROVER_TOKEN": tokens["fiona"]},
        )
        assert approved.returncode == 0, approved.stderr
        [grant] = await eventually(lambda: decisions(nc))
        assert isinstance(grant, ApprovalGranted)
        assert grant.body.payload_hash == payload_hash(REFUND) and grant.body.decided_by == ["fiona"]
        assert grant.run_id == "run1" and grant.body.reason == "matches the ticket"

        twice = api_post(base, tokens["fiona"], path + "/approve", body)
        assert twice.status_code == 409 and twice.json()["error"] == "already_decided"
        await asyncio.sleep(0.5)
        assert len(await decisions(nc)) == 1


async def test_the_cli_lists_and_decides_as_a_local_approver(keel_stack: StackFactory) -> None:
    stack, _, base = await start(keel_stack, None)
    data = str(stack.data_dir)
    added = keel("approvers", "add", "fiona", "--role", "finance", "--data-dir", data)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("kat_") and token not in stack.logs()
    async with await nats.connect(stack.nats_url) as nc:
        await publish_request(nc, refund_request("appr-cli", "run2"))
        listed = await eventually(
            lambda: (
                (r := keel("approvals", "list", "--json", "--as", "fiona", "--url", base, "--data-dir", data))
                and '"appr-cli"' in r.stdout
                and r
            )
        )
        assert listed.returncode == 0
        no_reason = keel("deny", "appr-cli", "--as", "fiona", "--reason", " ", "--url", base, "--data-dir", data)
        assert no_reason.returncode == 2
        denied = keel(
            "deny", "appr-cli", "--as", "fiona", "--reason", "wrong charge", "--url", base, "--data-dir", data
        )
        assert denied.returncode == 0, denied.stderr
        [event] = await eventually(lambda: decisions(nc))
        assert event.type == "approval_denied" and event.body.reason == "wrong charge"  # type: ignore[attr-defined]
        again = keel("approve", "appr-cli", "--as", "fiona", "--url", base, "--data-dir", data)
        assert again.returncode == 1 and "already_decided" in again.stderr


async def test_expiry_escalates_across_a_restart_of_the_service_and_of_nats(
    keel_stack: StackFactory, nats_server: NatsServer, store_url: str | None
) -> None:
    stack, db_url, base = await start(keel_stack, store_url)
    tokens = add_approvers(db_url, fiona=["finance"])
    path = "/api/v1/approvals/" + quote("appr-exp", safe="")
    async with await nats.connect(stack.nats_url) as nc:
        await publish_request(nc, refund_request("appr-exp", "run3", expires_in=8))
        await eventually(lambda: api_get(base, tokens["fiona"], path).status_code == 200)
    # Nothing keeps the wait alive but the schedule in the stream: kill the service, restart NATS.
    stack.kill("approval")
    nats_server.stop()
    nats_server.start()
    await asyncio.sleep(9)  # past the expiry while the approval service is down
    await stack.restart("approval")
    async with await nats.connect(stack.nats_url) as nc:
        [expired] = await eventually(lambda: decisions(nc), timeout=60)
        assert isinstance(expired, ApprovalExpired)
        assert expired.body.approval_id == "appr-exp" and expired.body.escalate_to == "manager_review"
    detail = await eventually(lambda: (r := api_get(base, tokens["fiona"], path)).status_code == 200 and r.json())
    assert detail["status"] == "escalated"
    late = api_post(base, tokens["fiona"], path + "/approve", {"payload_hash": payload_hash(REFUND)})
    assert late.status_code == 409 and late.json()["error"] == "expired"


async def test_a_lost_store_is_rebuilt_from_the_stream(keel_stack: StackFactory) -> None:
    stack, db_url, base = await start(keel_stack, None)
    tokens = add_approvers(db_url, fiona=["finance"])
    async with await nats.connect(stack.nats_url) as nc:
        for i in range(3):
            await publish_request(nc, refund_request(f"appr-{i}", f"run-r{i}"))
        path = "/api/v1/approvals/appr-0"
        await eventually(lambda: api_get(base, tokens["fiona"], "/api/v1/approvals").json()["approvals"].__len__() == 3)
        assert (
            api_post(base, tokens["fiona"], path + "/approve", {"payload_hash": payload_hash(REFUND)}).status_code
            == 200
        )
        await eventually(lambda: decisions(nc))
    # `keel approvals rebuild` with the service stopped: the store comes back from the events alone.
    stack.kill("approval")
    rebuilt = keel("approvals", "rebuild", "--nats-url", stack.nats_url, "--data-dir", str(stack.data_dir))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "4 events applied" in rebuilt.stdout
    await stack.restart("approval")
    doc = api_get(base, tokens["fiona"], "/api/v1/approvals?status=all").json()
    assert sorted((a["approval_id"], a["status"]) for a in doc["approvals"]) == [
        ("appr-0", "approved"),
        ("appr-1", "pending"),
        ("appr-2", "pending"),
    ]
