"""`keel audit show`'s reconstruction of a gated write, from real contract events in a signed log."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from audit_testlib import STREAM, T0, AuditLog, make_log
from typer.testing import CliRunner

from keel_audit.cli import app
from keel_audit.records import SourceRecord
from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalRequestedBody,
    ApprovalTarget,
    payload_hash,
)
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RetryScheduledBody,
    RunCompleted,
    RunCompletedBody,
    RunStarted,
    RunStartedBody,
    StepFailed,
    StepFailedBody,
    StepScheduled,
    StepScheduledBody,
    StepSucceeded,
    StepSucceededBody,
)
from keel_shared import decisions
from keel_shared.decisions import sign_decision
from keel_shared.settings import KeelSettings
from keel_shared.signing import Signer

RUN = "rgated"
PAYLOAD = {"title": "Refund 42 EUR", "amount": 42}
HASH = payload_hash(PAYLOAD)
runner = CliRunner()


def _envelope(step: str | None = None, attempt: int = 0, actor: str = "router") -> dict[str, object]:
    return {
        "run_id": RUN,
        "workflow": "refund",
        "step_id": step,
        "attempt": attempt,
        "correlation_id": "c" * 32,
        "actor": actor,
        "occurred_at": T0,
        "dedupe_key": f"{RUN}/{step}/{attempt}/{actor}",
    }


def _scheduled(attempt: int) -> StepScheduled:
    return StepScheduled(
        **_envelope("create", attempt),
        body=StepScheduledBody(
            tool="sandbox.tickets.create",
            input=PAYLOAD,
            idempotency_key=f"{RUN}/create",
            command_id=f"cmd-{attempt}",
            timeout_seconds=30,
            reason="approved write, next step after approval a-1" if attempt == 1 else "retry of a transient failure",
            side_effect="write",
            approval_ids=["a-1"],
            approved_payload_hash=HASH,
        ),
    )


def _events() -> list[tuple[str, Message]]:
    done = {"started_at": T0, "finished_at": T0 + timedelta(seconds=1), "executor_id": "executor-1"}
    return [
        (
            "router",
            RunStarted(
                **_envelope(),
                body=RunStartedBody(intent_key="ticket-42", source="cli", trigger_id="t-1", input={"n": 42}),
            ),
        ),
        (
            "router",
            ApprovalRequested(
                **_envelope("create"),
                body=ApprovalRequestedBody(
                    approval_id="a-1",
                    roles=["finance"],
                    approves_step="create",
                    tool="sandbox.tickets.create",
                    payload=PAYLOAD,
                    payload_hash=HASH,
                    target=ApprovalTarget(system="tickets", operation="create", record="queue-7"),
                    summary="Create a refund ticket",
                    reason="policy: refunds need finance",
                    requested_by="router",
                    expires_at=T0 + timedelta(hours=1),
                ),
            ),
        ),
        (
            "approval",
            ApprovalGranted(
                **_envelope("create", actor="alice"),
                body=ApprovalDecisionBody(
                    approval_id="a-1", payload_hash=HASH, decided_by=["alice"], roles=["finance"], decided_at=T0
                ),
            ),
        ),
        ("router", _scheduled(1)),
        (
            "executor",
            StepFailed(
                **_envelope("create", 1, "executor"),
                body=StepFailedBody(
                    tool="sandbox.tickets.create",
                    error_class=ErrorClass.TRANSIENT,
                    error_type="HTTP 503",
                    message="busy",
                    **done,
                ),
            ),
        ),
        (
            "router",
            RetryScheduled(
                **_envelope("create", 1),
                body=RetryScheduledBody(
                    next_attempt=2,
                    retrier_index=0,
                    error_class=ErrorClass.TRANSIENT,
                    delay_seconds=1,
                    due_at=T0,
                    reason="transient: attempt 2 of 3 in 1s",
                ),
            ),
        ),
        ("router", _scheduled(2)),
        (
            "executor",
            StepSucceeded(
                **_envelope("create", 2, "executor"),
                body=StepSucceededBody(tool="sandbox.tickets.create", output={"ticket_id": "T-981"}, **done),
            ),
        ),
        ("router", RunCompleted(**_envelope(), body=RunCompletedBody(output={"ok": True}, reason="all steps done"))),
    ]


def _log(tmp_path: Path, events: list[tuple[str, Message]] | None = None) -> AuditLog:
    log = make_log(tmp_path / "audit")
    writer = log.open()
    for seq, (emitter, event) in enumerate(_events() if events is None else events, start=1):
        writer.append(
            SourceRecord(
                stream=STREAM,
                seq=seq,
                subject=f"keel.run.refund.{RUN}.{emitter}.{event.type}",
                time=T0 + timedelta(seconds=seq),
                data=event.model_dump_json().encode(),
            )
        )
    writer.flush()
    return log


def test_show_reconstructs_a_gated_write_with_its_approval_retry_and_record(tmp_path: Path) -> None:
    log = _log(tmp_path)
    result = runner.invoke(app, ["show", RUN, "--dir", str(log.root), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["v"] == 1 and doc["verdict"] == "valid" and doc["all_verified"] is True and doc["records"] == 9
    assert doc["trigger"]["intent_key"] == "ticket-42" and doc["trigger"]["seq"] == 1
    [approval] = doc["approvals"]
    assert approval["decision"] == "granted" and approval["decided_by"] == ["alice"]
    assert approval["decided_payload_hash"] == HASH and approval["hash_matches"] is True
    assert approval["target"]["system"] == "tickets" and approval["requested"]["seq"] == 2
    assert [(a["attempt"], a["outcome"], a["error_class"]) for a in doc["attempts"]] == [
        (1, "failed", "transient"),
        (2, "succeeded", None),
    ]
    assert [d["type"] for d in doc["decisions"]] == ["step_scheduled", "retry_scheduled", "step_scheduled"]
    assert doc["decisions"][1]["why"] == "transient: attempt 2 of 3 in 1s"
    [write] = doc["writes"]
    assert (write["system"], write["operation"], write["record_id"]) == ("tickets", "create", "T-981")
    assert write["approved_payload_hash"] == HASH and write["approval_ids"] == ["a-1"]
    assert doc["final"] == {
        "status": "done",
        "seq": 9,
        "time": doc["final"]["time"],
        "verified": True,
        "reason": "all steps done",
        "output": {"ok": True},
        "error_class": None,
        "failed_step": None,
        "requested_by": None,
    }


def test_show_flags_a_modified_approval_and_exits_2(tmp_path: Path) -> None:
    log = _log(tmp_path)
    path = log.segment_path(0)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b'"decided_by":["alice"]', b'"decided_by":["mallory"]'))
    result = runner.invoke(app, ["show", RUN, "--dir", str(log.root), "--json"])
    doc = json.loads(result.output)
    assert result.exit_code == 2 and doc["verdict"] == "tampered"
    assert doc["approvals"][0]["decided_by"] == ["mallory"] and doc["approvals"][0]["decided"]["verified"] is False
    assert doc["unverified"] == [f"{STREAM}:3"]


def test_show_lists_an_event_from_the_wrong_emitter_as_rejected_and_never_uses_it(tmp_path: Path) -> None:
    events = _events()
    grant = next(event for emitter, event in events if emitter == "approval")
    # The attack of decision 026: a grant stored under the executor's token, before the real one.
    forged = grant.model_copy(update={"body": grant.body.model_copy(update={"decided_by": ["mallory"]})})
    events.insert(2, ("executor", forged))
    log = _log(tmp_path, events)

    result = runner.invoke(app, ["show", RUN, "--dir", str(log.root), "--json"])

    doc = json.loads(result.output)
    assert result.exit_code == 0, result.output  # the log itself is intact: the forgery is recorded
    [rejected] = doc["rejected"]
    assert (rejected["seq"], rejected["emitter"], rejected["type"]) == (3, "executor", "approval_granted")
    assert "approval" in rejected["why"]
    [approval] = doc["approvals"]
    assert approval["decided_by"] == ["alice"]  # only the approval service's grant counts
    assert [t["rejected"] for t in doc["timeline"] if t["seq"] == 3] == [rejected["why"]]
    text = runner.invoke(app, ["show", RUN, "--dir", str(log.root)]).output
    assert "Rejected" in text and "executor" in text


def test_show_with_the_approval_keyring_rejects_a_grant_whose_signature_does_not_verify(tmp_path: Path) -> None:
    approval = Signer.generate()
    settings = KeelSettings(data_dir=tmp_path / "keel", approval_signing_key_file=tmp_path / "keel" / "a.key")
    signer = decisions.KEYS.ensure(settings)
    assert signer.key_id
    events = _events()
    index, (_, grant) = next((i, pair) for i, pair in enumerate(events) if pair[0] == "approval")
    assert isinstance(grant, ApprovalGranted)
    events[index] = ("approval", sign_decision(approval, grant, "create"))  # signed, by a key nobody trusts
    log = _log(tmp_path, events)
    ring = str(decisions.KEYS.keyring_path(settings))

    doc = json.loads(
        runner.invoke(app, ["show", RUN, "--dir", str(log.root), "--json", "--approval-keyring", ring]).output
    )

    assert [r["type"] for r in doc["rejected"]] == ["approval_granted"] and "does not hold" in doc["rejected"][0]["why"]
    assert doc["approvals"][0]["decision"] == "pending"
    events[index] = ("approval", sign_decision(signer, grant, "create"))
    trusted = _log(tmp_path / "again", events)
    doc = json.loads(
        runner.invoke(app, ["show", RUN, "--dir", str(trusted.root), "--json", "--approval-keyring", ring]).output
    )
    assert doc["rejected"] == [] and doc["approvals"][0]["signature"] == "verified"
    assert doc["approvals"][0]["signed_by"] == signer.key_id
