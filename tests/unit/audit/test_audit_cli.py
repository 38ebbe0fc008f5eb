"""The ``keel audit`` sub-app: exit codes 0 valid, 2 tampered, 3 incomplete, 1 error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from audit_tamper import rewrite
from audit_testlib import STREAM, AuditLog, make_log
from typer.testing import CliRunner

from keel_audit.cli import app
from keel_audit.signing import load_signer

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_verify_exits_0_for_an_untouched_log(audit_log: AuditLog) -> None:
    code, out = _run("verify", "--dir", str(audit_log.root))
    assert code == 0, out
    assert "Verdict: VALID" in out and "unverifiable_tail" in out


def test_verify_with_an_out_of_band_keyring_does_not_warn_about_the_keyring(
    audit_log: AuditLog, tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted-keyring.json"
    shutil.copy(audit_log.layout.keyring, trusted)
    code, out = _run("verify", "--dir", str(audit_log.root), "--keyring", str(trusted), "--json")
    report = json.loads(out)
    assert code == 0 and "keyring_not_independent" not in {p["kind"] for p in report["problems"]}
    code, out = _run("verify", "--dir", str(audit_log.root), "--json")
    assert "keyring_not_independent" in {p["kind"] for p in json.loads(out)["problems"]}


def test_verify_exits_2_for_a_modified_record_and_names_it_in_json(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(1)
    rewrite(path, path.read_bytes().replace(b"event 6", b"event X"))
    code, out = _run("verify", "--dir", str(audit_log.root), "--json")
    report = json.loads(out)
    assert code == 2 and report["verdict"] == "tampered"
    assert {"kind": "modified", "record": f"{STREAM}:6"}.items() <= next(
        p for p in report["problems"] if p["kind"] == "modified"
    ).items()


def test_verify_exits_3_for_a_declared_gap(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    log.open()
    log.append(1, 2, 5, 6)
    code, out = _run("verify", "--dir", str(log.root))
    assert code == 3 and "Verdict: INCOMPLETE" in out


def test_verify_exits_3_when_the_head_is_older_than_max_age(audit_log: AuditLog) -> None:
    code, _ = _run("verify", "--dir", str(audit_log.root), "--max-age", "60")
    assert code == 3  # the fixture's clock is in the past, so its newest seal is stale


def test_checkpoint_then_deleting_the_newest_segment_makes_verify_exit_2(audit_log: AuditLog, tmp_path: Path) -> None:
    checkpoint = tmp_path / "trusted.checkpoint.json"
    code, out = _run("checkpoint", "--dir", str(audit_log.root), "--out", str(checkpoint))
    assert code == 0, out
    assert _run("verify", "--dir", str(audit_log.root), "--from-checkpoint", str(checkpoint))[0] == 0
    audit_log.segment_path(4).unlink()
    code, out = _run("verify", "--dir", str(audit_log.root), "--from-checkpoint", str(checkpoint))
    assert code == 2 and "truncated" in out
    assert _run("verify", "--dir", str(audit_log.root))[0] == 0  # without it, only a warning is possible


def test_checkpoint_is_refused_for_a_tampered_log(audit_log: AuditLog, tmp_path: Path) -> None:
    audit_log.segment_path(2).unlink()
    code, _ = _run("checkpoint", "--dir", str(audit_log.root), "--out", str(tmp_path / "cp.json"))
    assert code == 1 and not (tmp_path / "cp.json").exists()


def test_signed_checkpoint_from_the_cli_verifies(audit_log: AuditLog, tmp_path: Path) -> None:
    key = tmp_path / "audit.pem"
    key.write_bytes(audit_log.signer.to_pem())
    checkpoint = tmp_path / "cp.json"
    assert _run("checkpoint", "--dir", str(audit_log.root), "--out", str(checkpoint), "--key", str(key))[0] == 0
    assert "signature" in json.loads(checkpoint.read_text())
    assert _run("verify", "--dir", str(audit_log.root), "--from-checkpoint", str(checkpoint))[0] == 0


def test_verify_exits_1_when_there_is_no_keyring(tmp_path: Path) -> None:
    code, out = _run("verify", "--dir", str(tmp_path / "nothing"))
    assert code == 1 and "no keyring" in out


def test_prove_by_sequence_prints_a_valid_proof(audit_log: AuditLog) -> None:
    code, out = _run("prove", "11", "--dir", str(audit_log.root), "--json")
    result = json.loads(out)
    assert code == 0 and result["valid"] is True
    assert json.loads(result["proof"]["record"])["seq"] == 11


def test_prove_exits_1_for_an_unknown_record(audit_log: AuditLog) -> None:
    assert _run("prove", "nope", "--dir", str(audit_log.root))[0] == 1


def test_keys_generate_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    code, text = _run("keys", "generate", "--out", str(out))
    assert code == 0 and out.stat().st_mode & 0o777 == 0o600
    assert f"key_id:     {load_signer(out).key_id}" in text
    assert _run("keys", "generate", "--out", str(out))[0] == 1


def test_show_prints_the_timeline_of_one_run(audit_log: AuditLog) -> None:
    code, out = _run("show", "r-2", "--dir", str(audit_log.root))
    lines = out.strip().splitlines()
    rows = lines[lines.index("Timeline:") + 1 : lines.index("Final: running")]
    assert code == 0 and len(rows) == 10
    # The test log's events are not Keel event types: listed and verified, not interpreted.
    assert all(row.strip().startswith("ok ") and "step.completed" in row and "not interpreted" in row for row in rows)
    assert rows[0].split()[1] == "2"
    assert lines[-1].startswith("10 records, every record verified")


def test_show_of_an_unknown_run_exits_1(audit_log: AuditLog) -> None:
    code, _ = _run("show", "r-nope", "--dir", str(audit_log.root))
    assert code == 1


def test_show_marks_a_modified_record_and_exits_2(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(1)
    rewrite(path, path.read_bytes().replace(b"event 6", b"event X"))
    code, out = _run("show", "r-2", "--dir", str(audit_log.root), "--json")
    doc = json.loads(out)
    assert code == 2 and doc["verdict"] == "tampered" and doc["all_verified"] is False
    assert [r["seq"] for r in doc["timeline"] if not r["verified"]] == [6]
    assert doc["unverified"] == ["KEEL_EVENTS:6"]
