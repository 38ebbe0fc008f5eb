"""What must hold after the chaos: every run finished or parked, each write applied at most once and only
when the run says so, no command left in the work queue, no dead letter, an audit log that verifies, and
every run rebuilt from that log alone agreeing with the run view and the systems of record."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import Engine, text

from keel_audit.keyring import KeyringFile
from keel_audit.reconstruct import records_by_run
from keel_audit.runreport import collect
from keel_audit.store import AuditDirectory, DirectorySegmentStore
from keel_audit.verify import VerifyReport, verify_log
from keel_contracts import subjects as s
from keel_contracts.codec import decode
from keel_contracts.deadletter import DeadLetter
from keel_contracts.runs import RunStatus, RunView
from keel_shared.provisioning import durables
from keel_shared.settings import KeelSettings
from tests.chaos.workload import Decision, PlannedRun
from tests.integration.audit_support import sealed_through

#: How many offending runs a failure lists (the counts say how many there were in all).
SHOWN = 10


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)

    def check(self, what: str, offenders: list[str]) -> int:
        if offenders:
            shown = "; ".join(offenders[:SHOWN]) + (
                f"; ... ({len(offenders)} in all)" if len(offenders) > SHOWN else ""
            )
            self.failures.append(f"{what}: {shown}")
        return len(offenders)


# -- settling ---------------------------------------------------------------------------------------


async def backlog(js: JetStreamContext) -> dict[str, int]:
    """Work not yet done: messages left in the KEEL_COMMANDS work queue, and per durable consumer the
    messages not yet delivered or delivered and not yet acknowledged."""
    left = {s.COMMANDS_STREAM: (await js.stream_info(s.COMMANDS_STREAM)).state.messages}
    for spec in durables(KeelSettings()):
        name = spec.config.durable_name or ""
        info = await js.consumer_info(spec.stream, name)
        left[name] = info.num_pending + info.num_ack_pending
    return left


async def settle(js: JetStreamContext, audit_dir: AuditDirectory, timeout: float) -> dict[str, int]:
    """Wait until no work is left and the audit log has sealed the whole event stream; returns the backlog
    as last seen (all zeros once settled, or what is stuck)."""
    store = DirectorySegmentStore(audit_dir.segments)
    deadline = time.monotonic() + timeout
    left: dict[str, int] = {"unknown": -1}
    while time.monotonic() < deadline:
        try:
            left = await backlog(js)
            last_seq = (await js.stream_info(s.EVENTS_STREAM)).state.last_seq
        except Exception:  # the connection is still coming back from the last restart
            await asyncio.sleep(0.5)
            continue
        left["audit (events not yet sealed)"] = max(0, last_seq - sealed_through(store))
        if not any(left.values()):
            return left
        await asyncio.sleep(0.5)
    return left


async def dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    state = (await js.stream_info(s.DLQ_STREAM)).state
    letters = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        letters.append(decode(DeadLetter, (await js.get_msg(s.DLQ_STREAM, seq)).data or b""))
    return letters


# -- effects in the systems of record ---------------------------------------------------------------


def effect_ids(sandbox: Engine, ledger: Engine) -> dict[str, list[str]]:
    """Run id -> the records its writes created, straight from the databases (not their APIs)."""
    queries = [
        (sandbox, "SELECT run_id, project || '-' || id FROM tickets WHERE run_id IS NOT NULL"),
        (sandbox, "SELECT run_id, CAST(id AS TEXT) FROM billing_refunds WHERE run_id IS NOT NULL"),
        (sandbox, "SELECT run_id, CAST(id AS TEXT) FROM access_grants WHERE run_id IS NOT NULL"),
        (ledger, "SELECT run_id, CAST(id AS TEXT) FROM demo_effects"),
    ]
    found: dict[str, list[str]] = {}
    for engine, query in queries:
        with engine.connect() as connection:
            for run_id, record in connection.execute(text(query)):
                found.setdefault(str(run_id), []).append(str(record))
    return found


def duplicate_keys(sandbox: Engine, ledger: Engine) -> list[str]:
    """Writes that share an idempotency key, or two accepted writes of one step of one run."""
    queries = [
        (
            sandbox,
            f"SELECT '{table}', idempotency_key, count(*) FROM {table} WHERE idempotency_key IS NOT NULL "
            "GROUP BY idempotency_key HAVING count(*) > 1",
        )
        for table in ("tickets", "billing_refunds", "access_grants")
    ]
    queries += [
        (
            sandbox,
            "SELECT 'write_log', run_id || '/' || step_id, count(*) FROM write_log WHERE run_id IS NOT NULL "
            "GROUP BY run_id, step_id HAVING count(*) > 1",
        ),
        (
            ledger,
            "SELECT 'demo_effects', run_id || '/' || step_id, count(*) FROM demo_effects "
            "GROUP BY run_id, step_id HAVING count(*) > 1",
        ),
    ]
    dups = []
    for engine, query in queries:
        with engine.connect() as connection:
            dups += [f"{table} {key} x{count}" for table, key, count in connection.execute(text(query))]
    return dups


def expected_record(plan: PlannedRun, output: dict[str, Any] | None) -> str | None:
    """The record a finished run says its write created (None: the run finished without writing)."""
    out = output or {}
    if plan.workflow == "slack_to_ticket":
        return str(out["ticket_id"]) if "ticket_id" in out else None
    if plan.workflow == "refund":
        return str(out["refund"]["id"]) if isinstance(out.get("refund"), dict) else None
    if plan.workflow == "access_change":
        return str(out["grant"]["id"]) if isinstance(out.get("grant"), dict) else None
    return "any"  # the demo ledger's effect has no id in the run's output; there must be one


# -- the audit log ----------------------------------------------------------------------------------


def audit_log(audit_dir: AuditDirectory) -> tuple[VerifyReport, dict[str, list[Any]]]:
    store = DirectorySegmentStore(audit_dir.segments)
    keyring = KeyringFile(audit_dir.keyring).load()
    assert keyring is not None, f"no audit keyring in {audit_dir.root}"
    return verify_log(store, keyring), records_by_run(store, keyring)


# -- one verdict per run ----------------------------------------------------------------------------


@dataclass
class Outcome:
    by_status: Counter[str] = field(default_factory=Counter)
    by_workflow: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    approvals: Counter[str] = field(default_factory=Counter)
    reconstructed: int = 0


def check_runs(
    plans: list[PlannedRun],
    views: dict[str, RunView | None],
    effects: dict[str, list[str]],
    runs_in_log: dict[str, list[Any]],
    log_report: VerifyReport,
    findings: Findings,
) -> Outcome:
    outcome = Outcome()
    lost, stuck, duplicated, missing, unexplained, unapproved, unreconstructed = [], [], [], [], [], [], []
    for plan in plans:
        view = views.get(plan.run_id)
        if view is None:
            lost.append(f"{plan.run_id} ({plan.workflow}): trigger stored, no run")
            continue
        status = view.status
        outcome.by_status[status.value] += 1
        outcome.by_workflow[f"{plan.workflow} {status.value}"] += 1
        ids = effects.get(plan.run_id, [])
        outcome.effects[plan.effect_table] += len(ids)
        where = f"{plan.run_id} ({plan.workflow}, {status.value}, decision {plan.decision.value})"
        if not (status.terminal or status.parked) or (
            status is RunStatus.NEEDS_APPROVAL and plan.decision is not Decision.LEAVE
        ):
            stuck.append(f"{where} at {view.current_step}")
        if len(ids) > 1:
            duplicated.append(f"{where}: {ids}")
        if status is RunStatus.DONE:
            expected = expected_record(plan, view.output)
            if expected is None:
                if ids:
                    unexplained.append(f"{where}: finished without a write, the system of record holds {ids}")
            elif len(ids) != 1 or expected not in ("any", ids[0]):
                missing.append(f"{where}: output names {expected}, the system of record holds {ids}")
        elif ids and status is not RunStatus.NEEDS_HUMAN:
            # Only an unknown outcome parked for a person may have landed without the run knowing.
            unexplained.append(f"{where}: not done, the system of record holds {ids}")

        rows = runs_in_log.get(plan.run_id)
        if not rows:
            unreconstructed.append(f"{where}: no records in the audit log")
            continue
        doc = collect(plan.run_id, rows, log_report.verdict).to_json()
        final = status.value if status.terminal or status is RunStatus.BLOCKED else "running"
        problems = []
        if doc["verdict"] != "valid" or not doc["all_verified"]:
            problems.append(f"verdict {doc['verdict']}")
        if doc["final"]["status"] != final:
            problems.append(f"log says {doc['final']['status']}, the view {status.value}")
        if status.terminal and len(doc["writes"]) != len(ids):
            problems.append(f"log records {len(doc['writes'])} writes, the system of record holds {ids}")
        if problems:
            unreconstructed.append(f"{where}: " + ", ".join(problems))
        else:
            outcome.reconstructed += 1
        for approval in doc["approvals"]:
            outcome.approvals[approval["decision"]] += 1
        if ids and plan.workflow in ("refund", "access_change"):
            granted = [a for a in doc["approvals"] if a["decision"] == "granted" and a["hash_matches"]]
            if not granted or plan.decision is not Decision.APPROVE:
                unapproved.append(f"{where}: write {ids} without a matching granted approval")

    findings.check("lost runs (triggered, never started)", lost)
    findings.check("stuck runs (neither final nor parked)", stuck)
    findings.check("duplicate effects (one run, several records)", duplicated)
    findings.check("missing effects (done, but not the record it names)", missing)
    findings.check("effects the run does not account for", unexplained)
    findings.check("writes without approval", unapproved)
    findings.check("runs the audit log does not reconstruct", unreconstructed)
    return outcome
