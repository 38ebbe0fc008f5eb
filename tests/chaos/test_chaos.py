"""Chaos: runs of the example workflows against the sandbox systems of record, with the sandbox injecting
faults, while a monkey SIGKILLs and restarts the router, the executors, the approval and audit services
and restarts the nats-server at random moments. Afterwards every run must be final or parked, no effect
applied twice (counted in the databases), no command left in the work queue, the audit log must verify,
and every run must be rebuilt from it. The counts are printed (`pytest -s`).

`KEEL_CHAOS_RUNS` (default 60; `make chaos` runs 1000) and `KEEL_CHAOS_SEED` (default: a fresh one,
printed, so a failure can be replayed with the same workload, faults and strike sequence).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from keel_approval.client import ApprovalClient
from keel_audit.store import AuditDirectory
from keel_audit.verify import Verdict
from keel_contracts import subjects as s
from keel_executor.tools.demo import ledger_engine
from keel_sandbox.testing import SandboxProcess
from keel_shared.natsserver import NatsServer
from tests.chaos.checks import (
    Findings,
    audit_log,
    check_runs,
    dead_letters,
    duplicate_keys,
    effect_ids,
    settle,
)
from tests.chaos.driver import Driver, connect_forever, drive
from tests.chaos.monkey import ChaosMonkey
from tests.chaos.workload import plan_runs
from tests.conftest import StackFactory
from tests.integration.approval_support import add_approvers

RUNS = int(os.environ.get("KEEL_CHAOS_RUNS", "60"))
SEED = int(os.environ.get("KEEL_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
#: Runs started and not yet finished or parked, at most (the rest wait to be triggered).
IN_FLIGHT = 24
#: Runs triggered per second, at most: the workload spans the strikes instead of finishing between two.
RATE = 4.0
#: Mean seconds between two strikes of the monkey.
MEAN_PAUSE = 2.0
#: Hang guards, not speed claims: far above what the runs need on a slow machine.
WORKLOAD_TIMEOUT = 240 + 3 * RUNS
SETTLE_TIMEOUT = 180

SERVICES = ("router", "executor", "approval", "audit")
#: Faults the sandbox injects at random into the calls the executors make (faults.py has the grammar):
#: refusals that processed nothing, and writes that were applied but answered badly or not at all.
FAULTS = [
    {"fault": "503", "probability": 0.03},
    {"fault": "429:0", "probability": 0.02},
    {"fault": "commit_then_500", "method": "POST", "probability": 0.05},
    {"fault": "commit_then_timeout:200", "method": "POST", "probability": 0.03},
    {"fault": "drop", "probability": 0.02},
    {"fault": "latency:100", "probability": 0.1},
]

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(WORKLOAD_TIMEOUT + SETTLE_TIMEOUT + 300)]


def arm_faults(base_url: str, seed: int) -> None:
    for number, fault in enumerate(FAULTS):
        body = {**fault, "count": None, "seed": seed + number}
        httpx.post(f"{base_url}/_faults", json=body, timeout=10).raise_for_status()


def disarm_faults(base_url: str) -> int:
    """Disarm every fault; returns how many fired."""
    fired = int(httpx.get(f"{base_url}/_faults", timeout=10).json()["fired_total"])
    httpx.delete(f"{base_url}/_faults", timeout=10).raise_for_status()
    return fired


def counts(pairs: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(pairs.items())) or "none"


async def test_runs_survive_killed_services_and_server_restarts_with_every_effect_applied_once(
    nats_server: NatsServer, keel_stack: StackFactory, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    print(f"\nchaos: {RUNS} runs, seed {SEED} (replay with KEEL_CHAOS_SEED={SEED})")
    rng = random.Random(SEED)
    env = {
        "KEEL_SANDBOX_URL": sandbox.base_url,
        # Segments seal within seconds, so the log covers the whole stream soon after the last event.
        "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "2",
        "KEEL_AUDIT_HEARTBEAT_SECONDS": "30",
    }
    stack = await keel_stack(executors=2, services=SERVICES, env=env)
    approval_url = stack.stack.approval_url
    assert approval_url is not None
    tokens = add_approvers(f"sqlite:///{stack.data_dir / 'approvals.db'}", fiona=["finance"], sam=["security"])
    approvers = {name: ApprovalClient(approval_url, token, timeout=5) for name, token in tokens.items()}
    plans = plan_runs(RUNS, rng, tag=f"chaos{SEED}")
    arm_faults(sandbox.base_url, rng.randrange(10**9))
    monkey = ChaosMonkey(stack.stack, nats_server, random.Random(rng.randrange(10**9)), MEAN_PAUSE)

    nc = await connect_forever(nats_server.url)
    try:
        driver = Driver(nc, plans, approvers, in_flight=IN_FLIGHT, rate=RATE)
        workload_seconds = await drive(driver, monkey, WORKLOAD_TIMEOUT)
        started = time.monotonic()
        await monkey.heal()
        await stack.wait_healthy()
        faults_fired = disarm_faults(sandbox.base_url)
        js = nc.jetstream(timeout=10)
        left = await settle(js, AuditDirectory(stack.data_dir / "audit"), SETTLE_TIMEOUT)
        settle_seconds = time.monotonic() - started
        views = await driver.snapshot(await js.key_value(s.RUNS_BUCKET))
        letters = await dead_letters(js)
        events = (await js.stream_info(s.EVENTS_STREAM)).state.messages
    finally:
        await nc.close()
        for client in approvers.values():
            client.__exit__()

    started = time.monotonic()
    findings = Findings()
    findings.check("work left in the queues after settling", [f"{name} {n}" for name, n in left.items() if n])
    sandbox_db, ledger_db = sandbox.engine, ledger_engine(stack.ledger_url)
    effects = effect_ids(sandbox_db, ledger_db)
    duplicates = findings.check("duplicate writes by idempotency key or step", duplicate_keys(sandbox_db, ledger_db))
    findings.check("dead letters", [f"{d.service}/{d.reason} {d.subject}: {d.detail[:200]}" for d in letters])
    log_report, runs_in_log = audit_log(AuditDirectory(stack.data_dir / "audit"))
    findings.check(
        "audit log does not verify",
        [] if log_report.verdict is Verdict.VALID else [f"{p.kind.value}: {p.message}" for p in log_report.problems],
    )
    findings.check(
        "events missing from the audit log",
        [] if log_report.events == events else [f"{log_report.events} logged of {events} in KEEL_EVENTS"],
    )
    outcome = check_runs(plans, views, effects, runs_in_log, log_report, findings)
    check_seconds = time.monotonic() - started

    lines = [
        f"chaos seed {SEED}: {RUNS} runs in {workload_seconds:.0f}s, settled in {settle_seconds:.0f}s, "
        f"checked in {check_seconds:.0f}s",
        f"  runs by final state   {counts(outcome.by_status)}",
        f"  runs by workflow      {counts(outcome.by_workflow)}",
        f"  effects applied       {counts(outcome.effects)}; duplicates {duplicates}",
        f"  approvals (audit log) {counts(outcome.approvals)}; API decisions {counts(driver.decisions)}; "
        f"API refusals {counts(driver.approval_refusals)}",
        f"  kills (SIGKILL)       {counts(monkey.kills())}",
        f"  nats-server restarts  {counts(monkey.server_restarts())}",
        f"  exited unprompted     {counts(monkey.exited)}",
        f"  sandbox faults fired  {faults_fired}",
        f"  trigger re-publishes  {driver.publish_retries}",
        f"  dead letters          {counts(Counter(f'{d.service}/{d.reason}' for d in letters))}",
        f"  queues after settling {counts(left)}",
        f"  audit log             {log_report.verdict.name}, {log_report.segments} segments, "
        f"{log_report.events} of {events} events; runs reconstructed {outcome.reconstructed}/{RUNS}",
    ]
    print("\n".join(lines + [f"  {note}" for note in monkey.exit_notes]))
    strikes = "\n".join(strike.describe() for strike in monkey.strikes)
    (tmp_path / "strikes.txt").write_text(strikes + "\n")
    assert not findings.failures, (
        f"chaos seed {SEED} (replay: KEEL_CHAOS_SEED={SEED}); logs in {stack.data_dir / 'logs'}\n"
        + "\n".join(findings.failures)
        + "\nstrikes:\n"
        + strikes
    )
