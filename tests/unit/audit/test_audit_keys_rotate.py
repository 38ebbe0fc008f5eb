"""`keel audit keys rotate`: the log switches keys with a signed key_change record and still verifies."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_testlib import make_log, signer_from
from typer.testing import CliRunner

from keel_audit.cli import app
from keel_audit.signing import load_signer, write_private_key

runner = CliRunner()


def test_a_rotated_log_is_signed_by_the_new_key_from_the_key_change_on_and_still_verifies(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    log.append(1, 2, 3, 4, 5)
    assert log.writer is not None
    log.writer.flush()
    current = tmp_path / "current.pem"
    write_private_key(log.signer, current)
    new = tmp_path / "new.pem"
    assert runner.invoke(app, ["keys", "generate", "--out", str(new)]).exit_code == 0

    rotated = runner.invoke(
        app, ["keys", "rotate", "--current", str(current), "--new", str(new), "--dir", str(log.root)]
    )
    assert rotated.exit_code == 0, rotated.output
    new_signer = load_signer(path=new)
    assert f"-> {new_signer.key_id}" in rotated.output

    # The service, restarted with the new key, goes on writing (its clock after the rotation's, and the
    # rotation ran on the real clock while this log's writer runs on a fake one).
    log.clock.now = datetime.now(UTC) + timedelta(seconds=1)
    log.writer = None
    log.open(new_signer)
    log.append(6, 7, 8, 9)
    log.writer.flush()
    report = log.verify()
    assert report.verdict == 0, report.problems
    assert not [p for p in report.problems if p.kind.value in ("key_outside_window", "unknown_key", "forged")]
    keys = {entry.key_id: entry for entry in log.keyring.keys}
    assert keys[log.signer.key_id].last_segment is not None  # the old key is retired at the rotation
    verified = runner.invoke(app, ["verify", "--dir", str(log.root)])
    assert verified.exit_code == 0, verified.output


def test_rotating_with_a_key_the_log_is_not_signed_with_is_refused(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    log.append(1, 2, 3, 4)
    assert log.writer is not None
    log.writer.flush()
    wrong, new = tmp_path / "wrong.pem", tmp_path / "new.pem"
    write_private_key(signer_from(7), wrong)
    write_private_key(signer_from(8), new)

    result = runner.invoke(app, ["keys", "rotate", "--current", str(wrong), "--new", str(new), "--dir", str(log.root)])

    assert result.exit_code == 1
    assert "cannot rotate" in result.output
    assert log.verify().verdict == 0  # nothing was written
