"""``keel audit show``: one run rebuilt from the signed segments alone, in Keel's own event types.

The log records are decoded with the ``keel_contracts`` event classes and folded into what an auditor
asks about a run: the trigger, each routing decision and why, each attempt and how it ended, the
approvals (who, when, which payload hash), the writes (system of record and record id), the final
state, and whether every record behind all that verified. The JSON form is versioned (``"v": 1``) and
documented in docs/audit.md; fields are only ever added.

A record that does not decode as a known event (written by a newer Keel, redacted beyond the
contract, or not JSON) still appears in the timeline, marked ``decoded: false``, and is not
interpreted. A record stored where its type's rightful emitter never stores it (the topology table,
decision 026) is listed under ``rejected`` with the reason and is never part of the story: the services
never folded it either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from keel_audit.reconstruct import RunRecord
from keel_audit.records import EVENT, GAP, subject_tokens
from keel_audit.verify import Verdict
from keel_contracts.approvals import ApprovalDenied, ApprovalGranted
from keel_contracts.envelope import Message
from keel_contracts.events import EVENT_TYPES, unpacked
from keel_contracts.topology import emitter_problem
from keel_shared.decisions import decision_problem
from keel_shared.keyrings import Verifier

REPORT_VERSION = 1
FINAL_STATUS = {
    "run_completed": "done",
    "run_failed": "failed",
    "run_cancelled": "cancelled",
    "run_blocked": "blocked",
}
DECISION_TYPES = ("step_scheduled", "route_decided", "retry_scheduled", "run_blocked")
APPROVAL_DECISIONS = {
    "approval_granted": "granted",
    "approval_denied": "denied",
    "approval_expired": "expired",
    "approval_withdrawn": "withdrawn",
}
#: Output fields that name the record a write created or changed, most specific first; after them any
#: other ``*_id`` field, in name order.
RECORD_ID_FIELDS = ("record_id", "id")


@dataclass(slots=True)
class _Event:
    row: RunRecord
    seq: int | None
    time: str | None
    type: str
    emitter: str | None
    message: Message | None
    # Why the record is not believed (not from its type's rightful emitter), or None.
    rejected: str | None = None


@dataclass(slots=True)
class RunReport:
    run_id: str
    log_verdict: Verdict = Verdict.VALID
    events: list[_Event] = field(default_factory=list)
    gaps: list[RunRecord] = field(default_factory=list)
    others: list[RunRecord] = field(default_factory=list)
    #: Whether approval decisions' signatures were checked against a keyring.
    checked_signatures: bool = False

    @property
    def records(self) -> list[RunRecord]:
        return [e.row for e in self.events] + self.others

    @property
    def all_verified(self) -> bool:
        return bool(self.events) and all(r.verified for r in self.records)

    @property
    def verdict(self) -> Verdict:
        """Tampered if any record of the run (or the log around it) fails; incomplete if the log has
        gaps that could hold records of this run."""
        own = Verdict.VALID
        if not all(r.verified for r in [*self.records, *self.gaps]):
            own = Verdict.TAMPERED
        elif self.gaps:
            own = Verdict.INCOMPLETE
        return max(own, self.log_verdict, key=_severity)

    def to_json(self) -> dict[str, Any]:
        return build_json(self)


def _severity(verdict: Verdict) -> int:
    return {Verdict.VALID: 0, Verdict.INCOMPLETE: 1, Verdict.ERROR: 2, Verdict.TAMPERED: 3}[verdict]


def _decode(record: dict[str, Any], event_type: str) -> Message | None:
    model = EVENT_TYPES.get(event_type)
    data = record.get("data")
    if model is None or not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def collect(
    run_id: str,
    rows: Iterable[RunRecord],
    log_verdict: Verdict = Verdict.VALID,
    decisions: Verifier | None = None,
) -> RunReport:
    """The run's report from its log records. With the approval keyring (`decisions`), a grant or denial
    whose signature does not verify is rejected like an event from the wrong emitter: the router never
    folded it either (decision 026). Without one, each decision says its signature was not checked."""
    report = RunReport(run_id, log_verdict, checked_signatures=decisions is not None)
    for row in rows:
        if row.kind == GAP:
            report.gaps.append(row)
        elif row.kind == EVENT:
            subject = row.record.get("subject")
            tokens = subject_tokens(subject) if isinstance(subject, str) else None
            emitter = tokens[4] if tokens else None
            event_type = row.event_type
            message = _decode(row.record, event_type)
            rejected = emitter_problem(subject, message.type if message else None) if isinstance(subject, str) else None
            if rejected is None and decisions is not None and isinstance(message, ApprovalGranted | ApprovalDenied):
                rejected = decision_problem(decisions, message)
            report.events.append(_Event(row, row.seq, row.time, event_type, emitter, message, rejected))
        else:
            report.others.append(row)  # erasures of this run's payloads
    return report


def _dump(model: BaseModel | None) -> Any:
    return None if model is None else model.model_dump(mode="json")


def _base(event: _Event) -> dict[str, Any]:
    return {"seq": event.seq, "time": event.time, "verified": event.row.verified}


def _record_id(output: dict[str, Any]) -> str | None:
    for name in (*RECORD_ID_FIELDS, *sorted(k for k in output if k.endswith("_id"))):
        value = output.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def build_json(report: RunReport) -> dict[str, Any]:
    trigger: dict[str, Any] | None = None
    joined: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    attempts: dict[tuple[str | None, int], dict[str, Any]] = {}
    approvals: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] = {"status": "running", "seq": None, "time": None, "verified": None, "reason": None}
    workflow: str | None = None
    last_type: str | None = None

    # A run_started that carries its first step is the start and then that step's scheduling, both at
    # the stored event's sequence.
    facts = (
        (event, msg)
        for event in report.events
        if event.message is not None and event.rejected is None
        for msg in unpacked(event.message)
    )
    for event, msg in facts:
        workflow = workflow or msg.workflow
        last_type = msg.type
        body: Any = getattr(msg, "body", None)
        if msg.type == "run_started":
            trigger = {
                **_base(event),
                "source": body.source,
                "intent_key": body.intent_key,
                "trigger_id": body.trigger_id,
                "input": body.input,
                "workflow_version": body.workflow_version,
                "actor": msg.actor,
            }
        elif msg.type == "trigger_joined":
            joined.append({**_base(event), "source": body.source, "trigger_id": body.trigger_id})
        if msg.type in DECISION_TYPES:
            decisions.append(_decision(event, msg, body))
        if msg.type == "step_scheduled":
            attempts[(msg.step_id, msg.attempt)] = {
                "step_id": msg.step_id,
                "attempt": msg.attempt,
                "tool": body.tool,
                "side_effect": body.side_effect,
                "command_id": body.command_id,
                "idempotency_key": body.idempotency_key,
                "approval_ids": list(body.approval_ids),
                "approved_payload_hash": body.approved_payload_hash,
                "scheduled": _base(event),
                "outcome": "pending",
                "error_class": None,
                "error_type": None,
                "message": None,
                "started_at": None,
                "finished_at": None,
                "executor_id": None,
                "output": None,
                "finished": None,
            }
        elif msg.type in ("step_succeeded", "step_failed"):
            attempt = attempts.setdefault(
                (msg.step_id, msg.attempt),
                {"step_id": msg.step_id, "attempt": msg.attempt, "tool": body.tool, "scheduled": None},
            )
            attempt.update(
                {
                    "outcome": "succeeded" if msg.type == "step_succeeded" else "failed",
                    "started_at": body.started_at.isoformat(),
                    "finished_at": body.finished_at.isoformat(),
                    "executor_id": body.executor_id,
                    "finished": _base(event),
                }
            )
            if msg.type == "step_succeeded":
                attempt["output"] = body.output
            else:
                attempt.update(
                    {"error_class": str(body.error_class), "error_type": body.error_type, "message": body.message}
                )
        elif msg.type == "approval_requested":
            approvals[body.approval_id] = {
                "approval_id": body.approval_id,
                "step_id": body.approves_step,
                "roles": list(body.roles),
                "quorum": body.quorum,
                "tool": body.tool,
                "payload_hash": body.payload_hash,
                "target": _dump(body.target),
                "summary": body.summary,
                "requested_by": body.requested_by,
                "expires_at": body.expires_at.isoformat(),
                "requested": _base(event),
                "decision": "pending",
                "decided_by": [],
                "decided_roles": [],
                "decided_at": None,
                "decided_payload_hash": None,
                "hash_matches": None,
                "reason": None,
                "decided": None,
            }
        elif msg.type in APPROVAL_DECISIONS:
            entry = approvals.setdefault(body.approval_id, {"approval_id": body.approval_id, "requested": None})
            entry.update({"decision": APPROVAL_DECISIONS[msg.type], "decided": _base(event)})
            if msg.type == "approval_expired":
                entry["decided_at"] = body.expired_at.isoformat()
            elif msg.type == "approval_withdrawn":
                entry.update({"decided_at": msg.occurred_at.isoformat(), "reason": body.reason})
            else:
                entry.update(
                    {
                        "decided_by": list(body.decided_by),
                        "decided_roles": list(body.roles),
                        "decided_at": body.decided_at.isoformat(),
                        "decided_payload_hash": body.payload_hash,
                        "hash_matches": body.payload_hash == entry.get("payload_hash"),
                        "reason": body.reason,
                        "signed_by": body.key_id,
                        "signature": "verified" if report.checked_signatures else "not checked",
                    }
                )
        if msg.type in FINAL_STATUS:
            final = {
                "status": FINAL_STATUS[msg.type],
                **_base(event),
                "reason": body.reason,
                "output": getattr(body, "output", None),
                "error_class": None if getattr(body, "error_class", None) is None else str(body.error_class),
                "failed_step": getattr(body, "failed_step", None),
                "requested_by": getattr(body, "requested_by", None),
            }
    if final["seq"] is None and last_type is not None:
        final["last_event"] = last_type

    verdict = report.verdict
    return {
        "v": REPORT_VERSION,
        "run_id": report.run_id,
        "workflow": workflow,
        "verdict": verdict.name.lower(),
        "exit_code": int(verdict),
        "all_verified": report.all_verified,
        "log_verdict": report.log_verdict.name.lower(),
        "records": len(report.records),
        "unverified": [r.record.get("id") for r in report.records if not r.verified],
        "gaps": [
            {
                "from_seq": g.record.get("from_seq"),
                "to_seq": g.record.get("to_seq"),
                "segment": g.segment_index,
                "verified": g.verified,
            }
            for g in report.gaps
        ],
        "trigger": trigger,
        "joined_triggers": joined,
        "decisions": decisions,
        "attempts": list(attempts.values()),
        "approvals": list(approvals.values()),
        "writes": _writes(attempts.values(), approvals),
        "final": final,
        "rejected": [
            {"seq": e.seq, "time": e.time, "type": e.type, "emitter": e.emitter, "why": e.rejected}
            for e in report.events
            if e.rejected is not None
        ],
        "timeline": [
            {
                "seq": e.seq,
                "time": e.time,
                "type": e.type,
                "emitter": e.emitter,
                "step_id": None if e.message is None else e.message.step_id,
                "attempt": None if e.message is None else e.message.attempt,
                "segment": e.row.segment_index,
                "leaf_index": e.row.leaf_index,
                "verified": e.row.verified,
                "decoded": e.message is not None,
                "rejected": e.rejected,
                "payload": e.row.payload,
            }
            for e in report.events
        ],
    }


def _decision(event: _Event, msg: Message, body: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {**_base(event), "type": msg.type, "step_id": msg.step_id, "attempt": msg.attempt}
    if msg.type == "step_scheduled":
        entry.update({"why": body.reason, "tool": body.tool})
    elif msg.type == "route_decided":
        entry.update({"why": body.why, "kind": body.kind, "to_step": body.to_step})
    elif msg.type == "retry_scheduled":
        entry.update(
            {
                "why": body.reason,
                "next_attempt": body.next_attempt,
                "error_class": str(body.error_class),
                "delay_seconds": body.delay_seconds,
                "due_at": body.due_at.isoformat(),
            }
        )
    else:  # run_blocked: a policy cap decided the run may not go on
        entry.update({"why": body.reason, "cap": body.cap, "limit": body.limit, "value": body.value})
    return entry


def _writes(attempts: Iterable[dict[str, Any]], approvals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every write attempt that succeeded, with where it went: the approved target when an approval
    names one, else the tool's namespace (``sandbox.tickets.create`` -> ``sandbox``)."""
    writes = []
    for attempt in attempts:
        if attempt.get("side_effect") != "write" or attempt.get("outcome") != "succeeded":
            continue
        tool = str(attempt.get("tool") or "")
        target: dict[str, Any] = {}
        for approval_id in attempt.get("approval_ids") or []:
            target = (approvals.get(approval_id) or {}).get("target") or target
        output = attempt.get("output") or {}
        record_id = _record_id(output) if isinstance(output, dict) else None
        writes.append(
            {
                "step_id": attempt["step_id"],
                "attempt": attempt["attempt"],
                "tool": tool,
                "system": target.get("system") or tool.split(".", 1)[0],
                "operation": target.get("operation") or (tool.split(".", 1)[1] if "." in tool else tool),
                "record_id": record_id or target.get("record"),
                "idempotency_key": attempt.get("idempotency_key"),
                "approval_ids": attempt.get("approval_ids") or [],
                "approved_payload_hash": attempt.get("approved_payload_hash"),
                "seq": (attempt.get("finished") or {}).get("seq"),
                "verified": bool((attempt.get("finished") or {}).get("verified"))
                and bool((attempt.get("scheduled") or {}).get("verified")),
            }
        )
    return writes


def render_text(doc: dict[str, Any]) -> list[str]:
    """The human-readable form of :func:`build_json`'s document."""

    def mark(verified: Any) -> str:
        return "ok " if verified else "BAD"

    lines = [f"Run {doc['run_id']} (workflow {doc['workflow'] or '?'})"]
    trigger = doc["trigger"]
    if trigger:
        lines.append(
            f"{mark(trigger['verified'])} trigger   seq {trigger['seq']}  {trigger['time']}  "
            f"source={trigger['source']} intent_key={trigger['intent_key']}  input={_short(trigger['input'])}"
        )
    for j in doc["joined_triggers"]:
        lines.append(f"{mark(j['verified'])} joined    seq {j['seq']}  {j['time']}  source={j['source']}")
    lines.append("Decisions:")
    for d in doc["decisions"]:
        step = f"{d['step_id']}#{d['attempt']}" if d["step_id"] else "-"
        lines.append(f"  {mark(d['verified'])} seq {d['seq']:<6} {d['type']:<16} {step:<18} why: {d['why']}")
    lines.append("Attempts:")
    for a in doc["attempts"]:
        error = f"  error_class={a.get('error_class')} ({a.get('error_type')}: {a.get('message')})"
        rows = [a.get("scheduled"), a.get("finished")]
        ok = all(r is None or r["verified"] for r in rows)
        lines.append(
            f"  {mark(ok)} {a['step_id']}#{a['attempt']:<3} {a.get('tool')}: {a.get('outcome')}"
            + (error if a.get("outcome") == "failed" else "")
        )
    if doc["approvals"]:
        lines.append("Approvals:")
    for p in doc["approvals"]:
        ok = all(r is None or r["verified"] for r in (p.get("requested"), p.get("decided")))
        lines.append(
            f"  {mark(ok)} {p['approval_id']} for {p.get('step_id')}: {p.get('decision')} by "
            f"{', '.join(p.get('decided_by') or []) or '-'} at {p.get('decided_at') or '-'}  "
            f"payload {p.get('decided_payload_hash') or p.get('payload_hash')}"
        )
    if doc["writes"]:
        lines.append("Writes:")
    for w in doc["writes"]:
        lines.append(
            f"  {mark(w['verified'])} {w['step_id']}#{w['attempt']} {w['system']}.{w['operation']} "
            f"record={w['record_id'] or '-'}  idempotency_key={w['idempotency_key']}"
        )
    if doc.get("rejected"):
        lines.append("Rejected (stored, never believed: not from the rightful emitter of their type):")
        for r in doc["rejected"]:
            lines.append(f"  seq {r['seq']:<6} {r['emitter'] or '?':<9} {r['type']:<18} {r['why']}")
    lines.append("Timeline:")
    for t in doc["timeline"]:
        step = f"{t['step_id']}#{t['attempt']}" if t["step_id"] else ""
        raw = "" if t["decoded"] else "  (not a known event: shown, not interpreted)"
        lines.append(f"  {mark(t['verified'])} {t['seq']:>8}  {t['time'] or '':<27}  {t['type']:<24} {step}{raw}")
    for g in doc["gaps"]:
        lines.append(f"GAP: stream sequences {g['from_seq']}..{g['to_seq']} are missing from the log")
    final = doc["final"]
    lines.append(
        f"Final: {final['status']}" + (f" (seq {final['seq']}): {final['reason']}" if final.get("seq") else "")
    )
    verified = "every record verified" if doc["all_verified"] else f"UNVERIFIED records: {doc['unverified']}"
    lines.append(f"{doc['records']} records, {verified}; log verdict {doc['log_verdict']}; verdict {doc['verdict']}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
