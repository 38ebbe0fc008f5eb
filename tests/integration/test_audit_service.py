"""The audit service against a real nats-server and the real service processes: every event of the
stream ends up in a signed segment exactly once, across a SIGKILL, and `keel audit` verifies and
reconstructs runs from the segments alone (directory and object store backends)."""

import itertools
import json
import re
import shutil
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from typer.testing import CliRunner

from keel_audit.cli import app as audit_app
from keel_audit.errors import SegmentExistsError
from keel_audit.keyring import Keyring
from keel_audit.objstore import LoopBridge, ObjectStoreSegmentStore, background_loop
from keel_audit.records import SourceRecord
from keel_audit.segment import parse_segment
from keel_audit.signing import Signer
from keel_audit.store import AuditDirectory, DirectorySegmentStore, SegmentStore
from keel_audit.verify import Verdict, verify_log
from keel_audit.writer import SegmentPolicy, SegmentWriter
from keel_contracts import subjects as s
from keel_sandbox.testing import SandboxProcess
from keel_shared.connection import connect
from keel_shared.natsserver import NatsServer
from keel_shared.provisioning import provision
from keel_shared.settings import KeelSettings
from tests.conftest import StackFactory, StackHandle, eventually
from tests.integration.audit_support import sealed_through
from tests.integration.router_kit import approval_request, decide_approval, reaches

pytestmark = pytest.mark.integration

runner = CliRunner()
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Small segments so that a few runs span several of them, and a heartbeat that keeps the log moving.
SMALL_SEGMENTS = {
    "KEEL_AUDIT_SEGMENT_MAX_RECORDS": "5",
    "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "1",
    "KEEL_AUDIT_HEARTBEAT_SECONDS": "2",
}


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(audit_app, list(args))
    return result.exit_code, result.output


def audit_dir(stack: StackHandle) -> Path:
    return stack.data_dir / "audit"


def event_seqs(store: SegmentStore) -> list[int]:
    """Stream sequences of every event record, in log order (segments in index order)."""
    seqs = []
    for index in store.indices():
        for line in parse_segment(store.read(index)).records:
            record = msgspec.json.decode(line)
            if record["t"] == "event":
                seqs.append(record["seq"])
    return seqs


async def stream_last_seq(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(s.EVENTS_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def all_sealed(stack: StackHandle, store: SegmentStore) -> int | None:
    """The stream's last sequence once a sealed segment covers it, else None."""
    last = await stream_last_seq(stack.nats_url)
    return last if last > 0 and sealed_through(store) == last else None


def audit_metrics(stack: StackHandle) -> dict[str, float]:
    port = stack.stack.children["audit"].spec.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r"^(keel_audit_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


async def run_demo(stack: StackHandle, key: str, workflow: str = "demo", data: Any = None) -> str:
    async with await stack.client() as keel:
        answer = await keel.trigger(workflow, data or {}, key, wait=True, timeout=90)
        return answer.run_id


async def test_every_event_of_the_stream_is_in_exactly_one_segment_and_the_log_verifies(
    keel_stack: StackFactory,
) -> None:
    stack = await keel_stack(services=("router", "executor", "audit"), env=SMALL_SEGMENTS)
    for n in range(3):
        await run_demo(stack, f"audit-a-{n}")
    store = DirectorySegmentStore(AuditDirectory(audit_dir(stack)).segments)
    last = await eventually(lambda: all_sealed(stack, store))
    assert event_seqs(store) == list(range(1, last + 1)), stack.logs()
    assert len(store.indices()) > 3  # closed by count and age, not one big segment

    code, out = cli("verify", "--dir", str(audit_dir(stack)), "--json")
    report = json.loads(out)
    assert code == 0, out
    assert report["verdict"] == "valid" and report["events"] == last
    assert report["head"]["last_seq"] == last
    # The gauges follow the seal (and the lag the next idle poll of the stream).
    await eventually(
        lambda: (
            audit_metrics(stack)["keel_audit_last_sealed_seq"] == last and audit_metrics(stack)["keel_audit_lag"] == 0
        )
    )


async def test_a_sigkilled_audit_service_resumes_with_no_duplicate_and_no_hole(keel_stack: StackFactory) -> None:
    # Segments close by count only, so the open segment holds events at the moment of the kill.
    # 5 divides no demo run's event count (7 events since decision 025, 8 before it).
    env = {"KEEL_AUDIT_SEGMENT_MAX_RECORDS": "5", "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "3600"}
    stack = await keel_stack(services=("router", "executor", "audit"), env=env)
    store = DirectorySegmentStore(AuditDirectory(audit_dir(stack)).segments)

    async def caught_up() -> bool:
        appended = audit_metrics(stack).get("keel_audit_records_written_total", 0)
        return appended == await stream_last_seq(stack.nats_url)

    for n in range(10):  # a run adds a handful of events; stop when some are appended but not yet sealed
        await run_demo(stack, f"audit-b-{n}")
        await eventually(caught_up)
        if audit_metrics(stack)["keel_audit_last_sealed_seq"] < await stream_last_seq(stack.nats_url):
            break
    else:
        pytest.fail("every run ended exactly on a segment boundary")
    sealed_before = sealed_through(store)
    stack.kill("audit")

    await run_demo(stack, "audit-b-while-down")  # events the dead service never saw
    await stack.restart("audit")
    await run_demo(stack, "audit-b-after")
    # A graceful stop flushes the open segment, so the whole stream is sealed afterwards.
    last = await stream_last_seq(stack.nats_url)
    await eventually(lambda: audit_metrics(stack).get("keel_audit_records_written_total", 0) >= last - sealed_before)
    await stack.restart("audit")
    last = await eventually(lambda: all_sealed(stack, store))

    seqs = event_seqs(store)
    assert seqs == list(range(1, last + 1)), stack.logs()
    seals = [parse_segment(store.read(i)).seal for i in store.indices()]
    for prev, nxt in itertools.pairwise(seals):
        assert nxt.first_seq == prev.last_seq + 1
    assert "shutdown" in {seal.close_reason for seal in seals}
    code, out = cli("verify", "--dir", str(audit_dir(stack)))
    assert code == 0, out


async def test_keel_audit_show_rebuilds_runs_from_the_segments_alone(keel_stack: StackFactory) -> None:
    stack = await keel_stack(services=("router", "executor", "audit"), env=SMALL_SEGMENTS)
    ok = await run_demo(stack, "audit-show-demo", data={"customer": "ACME"})
    caught = await run_demo(stack, "audit-show-flaky", workflow="flaky", data={"fail_times": 5})
    store = DirectorySegmentStore(AuditDirectory(audit_dir(stack)).segments)
    await eventually(lambda: all_sealed(stack, store))
    async with await stack.client() as keel:
        demo_events = await keel.timeline(ok)

    # Reconstruct from a copy of the audit directory: nothing but the segments and the keyring.
    copy = stack.data_dir.parent / "audit-copy"
    shutil.copytree(audit_dir(stack), copy)
    code, out = cli("show", ok, "--dir", str(copy), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["verdict"] == "valid" and doc["all_verified"] is True and doc["unverified"] == []
    assert doc["workflow"] == "demo"
    assert doc["trigger"]["source"] == "cli" and doc["trigger"]["input"] == {"customer": "ACME"}
    assert doc["trigger"]["intent_key"] == "audit-show-demo"
    # The audit's timeline is its records, one per stored event; the run timeline lists the first step a
    # run_started carries as an entry of its own, with the same sequence.
    stored = [e for i, e in enumerate(demo_events) if i == 0 or e.seq != demo_events[i - 1].seq]
    assert [e["type"] for e in doc["timeline"]] == [e.type for e in stored]
    assert [e["seq"] for e in doc["timeline"]] == [e.seq for e in stored]
    assert all(e["verified"] and e["decoded"] for e in doc["timeline"])
    scheduled = [d for d in doc["decisions"] if d["type"] == "step_scheduled"]
    assert [d["step_id"] for d in scheduled] == ["receive", "draft", "post"] and all(d["why"] for d in scheduled)
    assert [(a["step_id"], a["outcome"]) for a in doc["attempts"]] == [
        ("receive", "succeeded"),
        ("draft", "succeeded"),
        ("post", "succeeded"),
    ]
    [write] = doc["writes"]
    post = doc["attempts"][2]
    assert write["step_id"] == "post" and write["system"] == "demo" and write["operation"] == "ledger"
    assert write["record_id"] == str(post["output"]["effect_id"]) and write["verified"] is True
    assert doc["final"]["status"] == "done" and doc["final"]["verified"] is True

    code, out = cli("show", caught, "--dir", str(copy), "--json")
    assert code == 0, out
    doc = json.loads(out)
    attempts = doc["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "failed"]
    assert {a["error_class"] for a in attempts} == {"transient"}
    retries = [d for d in doc["decisions"] if d["type"] == "retry_scheduled"]
    assert len(retries) == 2 and all(r["why"] and r["error_class"] == "transient" for r in retries)
    [route] = [d for d in doc["decisions"] if d["type"] == "route_decided"]
    assert route["kind"] == "catch" and route["to_step"] == "give_up" and route["why"]
    assert doc["writes"] == [] and doc["final"]["status"] == "failed"

    code, out = cli("show", ok, "--dir", str(copy))
    assert code == 0 and "every record verified" in out and "Final: done" in out


async def test_object_store_backend_writes_once_round_trips_and_verifies(nats_server: NatsServer) -> None:
    settings = KeelSettings(nats_url=nats_server.url, audit_store="object_store", audit_bucket="AUDIT_T")
    admin = await nats.connect(nats_server.url)
    try:
        await provision(admin.jetstream(), settings)
    finally:
        await admin.close()

    with background_loop() as loop:
        bridge = LoopBridge(loop)
        nc = bridge.call(lambda: connect(settings, "audit", retry_initial=False, quiet=True))
        try:
            store = ObjectStoreSegmentStore(nc.jetstream(), "AUDIT_T", bridge)
            keyring = store.keyring()
            signer = Signer.generate()
            writer = SegmentWriter(
                store, signer, stream=s.EVENTS_STREAM, keyring=keyring, policy=SegmentPolicy(max_records=3)
            )
            for seq in range(1, 11):
                writer.append(
                    SourceRecord(
                        stream=s.EVENTS_STREAM,
                        seq=seq,
                        subject=f"keel.run.demo.r1.router.event_{seq}",
                        time=T0 + timedelta(seconds=seq),
                        data=json.dumps({"n": seq, "big": "x" * (200_000 if seq == 5 else 1)}).encode(),
                    )
                )
            writer.flush()
            assert store.indices() == [0, 1, 2, 3] and store.strays() == []
            first = store.read(0)
            with pytest.raises(SegmentExistsError):
                store.write(0, b"a rewritten segment\n")
            assert store.read(0) == first  # refused, and the stored bytes are unchanged

            # Resuming from the bucket continues the same log.
            again = SegmentWriter(store, signer, stream=s.EVENTS_STREAM, keyring=keyring)
            assert again.cursor == 10 and again.next_index == 4

            loaded = keyring.load()
            assert isinstance(loaded, Keyring) and loaded.get(signer.key_id) is not None
            report = verify_log(store, loaded)
            assert report.verdict is Verdict.VALID, [p.message for p in report.problems]
            assert report.events == 10 and event_seqs(store) == list(range(1, 11))

            # A client cannot remove a segment: the bucket denies delete and purge.
            async def delete() -> None:
                obs = await nc.jetstream().object_store("AUDIT_T")
                await obs.delete("segments/000000000000.jsonl")

            with pytest.raises(Exception, match=r"(?i)purge|delete|denied|not permitted|rollup"):
                bridge.call(delete)
            assert store.read(0) == first
        finally:
            bridge.call(nc.close)

    code, out = cli("verify", "--bucket", "AUDIT_T", "--nats-url", nats_server.url, "--json")
    assert code == 0, out
    assert json.loads(out)["events"] == 10


async def test_the_service_writes_to_the_object_store_and_keel_audit_reads_it(keel_stack: StackFactory) -> None:
    stack = await keel_stack(
        services=("router", "executor", "audit"),
        env={**SMALL_SEGMENTS, "KEEL_AUDIT_STORE": "object_store"},
        audit_store="object_store",
    )
    run_id = await run_demo(stack, "audit-objstore")
    last = await stream_last_seq(stack.nats_url)

    async def covered() -> bool:
        code, out = cli("verify", "--bucket", "KEEL_AUDIT", "--nats-url", stack.nats_url, "--json")
        return code == 0 and json.loads(out)["head"]["last_seq"] >= last

    await eventually(covered)
    code, out = cli("show", run_id, "--bucket", "KEEL_AUDIT", "--nats-url", stack.nats_url, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["final"]["status"] == "done" and doc["all_verified"] is True
    assert not (audit_dir(stack) / "segments").exists()  # nothing went to the directory backend


async def test_keel_audit_show_reconstructs_the_approval_example_end_to_end(
    keel_stack: StackFactory, sandbox: SandboxProcess
) -> None:
    stack = await keel_stack(
        services=("router", "executor", "audit"), env={**SMALL_SEGMENTS, "KEEL_SANDBOX_URL": sandbox.base_url}
    )
    async with await stack.client() as keel:
        answer = await keel.trigger(
            "refund", {"charge_id": "1", "amount_cents": 1000, "reason": "damaged"}, "audit-refund", actor="ada"
        )
        await reaches(keel, answer.run_id, "needs_approval")
        request = await approval_request(keel, answer.run_id)
        await decide_approval(stack, request, "granted", by="fin@example.com", reason="checked")
        await reaches(keel, answer.run_id, "done")
    store = DirectorySegmentStore(AuditDirectory(audit_dir(stack)).segments)
    await eventually(lambda: all_sealed(stack, store))

    code, out = cli("show", answer.run_id, "--dir", str(audit_dir(stack)), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["all_verified"] is True and doc["final"]["status"] == "done"
    assert doc["trigger"]["intent_key"] == "audit-refund"
    [approval] = doc["approvals"]
    assert approval["roles"] == ["finance"] and approval["requested_by"] == "ada"
    assert approval["decision"] == "granted" and approval["decided_by"] == ["fin@example.com"]
    assert approval["payload_hash"] == request.body.payload_hash and approval["hash_matches"] is True
    [refund] = [w for w in doc["writes"] if w["tool"] == "billing.refund"]
    assert refund["approved_payload_hash"] == request.body.payload_hash
    assert refund["approval_ids"] == [request.body.approval_id] and refund["verified"] is True
    assert sandbox.count("billing_refunds", run_id=answer.run_id) == 1
