"""Sensitive fields: salted commitments in the log, clear values in the erasable store, logged erasure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_testlib import STREAM, AuditLog, make_log, source

from keel_audit.errors import RecordNotFoundError
from keel_audit.reconstruct import run_records
from keel_audit.records import fixed_sensitive_paths
from keel_audit.redaction import (
    PointerError,
    commitment,
    parse_pointer,
    redact_record,
    replace,
    resolve,
)
from keel_audit.verify import Kind, Verdict


def test_json_pointer_follows_rfc_6901_escapes_and_indices() -> None:
    doc = {"a/b": {"m~n": [10, 20]}, "": 1}
    assert parse_pointer("/a~1b/m~0n/1") == ["a/b", "m~n", "1"]
    assert resolve(doc, "/a~1b/m~0n/1") == 20
    assert resolve(doc, "/") == 1
    assert resolve(doc, "") == doc
    for bad in ["/a~1b/m~0n/01", "/a~1b/m~0n/-", "/missing", "no-slash"]:
        with pytest.raises(PointerError):
            resolve(doc, bad)


def test_replace_copies_the_path_and_leaves_the_original_untouched() -> None:
    doc = {"a": {"b": [1, 2]}}
    assert replace(doc, "/a/b/0", "x") == {"a": {"b": ["x", 2]}}
    assert doc == {"a": {"b": [1, 2]}}


def test_redaction_replaces_values_by_commitments_bound_to_salt_and_pointer() -> None:
    record = {"id": "S:1", "data": {"user": {"email": "a@b.c", "name": "Ann"}, "amount": 5}}
    redacted, payload = redact_record(record, ["/user/email", "/absent"], salt=b"s" * 32)
    assert payload is not None and payload.values == {"/user/email": "a@b.c"}
    digest = commitment(b"s" * 32, "/user/email", "a@b.c")
    assert redacted["data"] == {
        "user": {"email": {"$redacted": f"sha256:{digest}"}, "name": "Ann"},
        "amount": 5,
    }
    assert redacted["redacted"] == ["/user/email"]
    assert commitment(b"t" * 32, "/user/email", "a@b.c") != digest
    assert commitment(b"s" * 32, "/user/name", "a@b.c") != digest


def test_nested_sensitive_pointers_are_covered_by_their_ancestor() -> None:
    record = {"id": "S:1", "data": {"card": {"number": "4111", "cvc": "123"}}}
    _redacted, payload = redact_record(record, ["/card/number", "/card"])
    assert payload is not None and list(payload.values) == ["/card"]


def test_sensitive_pointer_on_a_non_json_body_commits_the_whole_body() -> None:
    record = {"id": "S:1", "data_b64": "AAEC"}
    redacted, payload = redact_record(record, ["/token"])
    assert payload is not None and list(payload.values) == [""]
    assert "$redacted" in redacted["data_b64"]


@pytest.fixture
def sensitive_log(tmp_path: Path) -> AuditLog:
    log = make_log(tmp_path / "audit", sensitive=fixed_sensitive_paths("/secret"))
    writer = log.open()
    for seq in range(1, 7):
        writer.append(source(seq, body={"run_id": "r-1", "secret": f"card-{seq}", "public": seq}))
    writer.flush()
    return log


def test_clear_value_never_enters_the_log_and_the_log_verifies(sensitive_log: AuditLog) -> None:
    for index in sensitive_log.store.indices():
        assert b"card-" not in sensitive_log.store.read(index)
    assert sensitive_log.payloads.get(f"{STREAM}:3") is not None
    assert sensitive_log.verify().verdict is Verdict.VALID


def test_erasure_deletes_the_payload_logs_it_and_verification_still_passes(sensitive_log: AuditLog) -> None:
    writer = sensitive_log.writer
    assert writer is not None
    sealed = writer.erase(f"{STREAM}:3", reason="gdpr request 17", requested_by="user:dpo")
    assert sealed.seal.close_reason == "erasure"
    assert sensitive_log.payloads.get(f"{STREAM}:3") is None
    lines = sensitive_log.store.read(sealed.index).split(b"\n")
    erasure = json.loads(lines[0])
    assert (erasure["t"], erasure["target"], erasure["pointers"]) == ("erasure", f"{STREAM}:3", ["/secret"])
    report = sensitive_log.verify()
    assert report.verdict is Verdict.VALID, report.problems
    with pytest.raises(RecordNotFoundError):
        writer.erase(f"{STREAM}:3", reason="again", requested_by="user:dpo")


def test_payload_deleted_without_an_erasure_record_is_incomplete(sensitive_log: AuditLog) -> None:
    assert sensitive_log.payloads.delete(f"{STREAM}:4")
    report = sensitive_log.verify()
    assert report.verdict is Verdict.INCOMPLETE
    assert [p.record for p in report.problems if p.kind is Kind.PAYLOAD_MISSING] == [f"{STREAM}:4"]


def test_modified_clear_payload_is_tampered(sensitive_log: AuditLog) -> None:
    payload = sensitive_log.payloads.get(f"{STREAM}:2")
    assert payload is not None
    payload.values["/secret"] = "card-999"
    sensitive_log.payloads.put(payload)
    report = sensitive_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.record for p in report.problems if p.kind is Kind.MODIFIED] == [f"{STREAM}:2"]


def test_erasure_interrupted_before_the_payload_was_deleted_is_completed_on_resume(
    sensitive_log: AuditLog,
) -> None:
    writer = sensitive_log.writer
    assert writer is not None
    saved = sensitive_log.payloads.get(f"{STREAM}:5")
    assert saved is not None
    writer.erase(f"{STREAM}:5", reason="r", requested_by="u")
    sensitive_log.payloads.put(saved)  # as if the process died before deleting it
    report = sensitive_log.verify()
    assert report.verdict is Verdict.VALID and Kind.ERASURE_PENDING in report.kinds()
    sensitive_log.open()
    assert sensitive_log.payloads.get(f"{STREAM}:5") is None


def test_reconstruction_restores_clear_values_and_marks_erased_ones_redacted(sensitive_log: AuditLog) -> None:
    writer = sensitive_log.writer
    assert writer is not None
    writer.erase(f"{STREAM}:1", reason="r", requested_by="u")
    rows = list(run_records(sensitive_log.store, sensitive_log.keyring, "r-1", payloads=sensitive_log.payloads))
    events = [r for r in rows if r.kind == "event"]
    assert [r.payload for r in events] == ["redacted"] + ["restored"] * 5
    assert events[1].body["secret"] == "card-2"
    assert [r.kind for r in rows][-1] == "erasure"
    assert all(r.verified for r in rows)


def test_keel_audit_erase_logs_who_and_why_deletes_the_payload_and_the_log_still_verifies(
    sensitive_log: AuditLog, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from keel_audit.cli import app
    from keel_audit.signing import write_private_key

    key = tmp_path / "signing.pem"
    write_private_key(sensitive_log.signer, key)
    sensitive_log.clock.now = datetime.now(UTC)  # the command signs on the real clock
    args = ["erase", f"{STREAM}:3", "--reason", "gdpr request 17", "--by", "user:dpo", "--key", str(key)]

    result = CliRunner().invoke(app, [*args, "--dir", str(sensitive_log.root)])

    assert result.exit_code == 0, result.output
    assert sensitive_log.payloads.get(f"{STREAM}:3") is None
    last = max(sensitive_log.store.indices())
    erasure = json.loads(sensitive_log.store.read(last).split(b"\n")[0])
    assert (erasure["t"], erasure["target"]) == ("erasure", f"{STREAM}:3")
    assert sensitive_log.verify().verdict is Verdict.VALID
    again = CliRunner().invoke(app, [*args, "--dir", str(sensitive_log.root)])
    assert again.exit_code == 1 and "cannot erase" in again.output
