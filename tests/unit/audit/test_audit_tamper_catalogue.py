"""The tamper catalogue (anchors-audit.md section 5): each mutation, its verdict and the problem named."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from audit_tamper import lines, resign, rewrite, write_lines
from audit_testlib import STREAM, AuditLog, make_log, signer_from, source

from keel_audit.checkpoint import Checkpoint
from keel_audit.keyring import KeyEntry, KeyringFile
from keel_audit.records import SourceRecord
from keel_audit.segment import parse_segment
from keel_audit.verify import Kind, Verdict
from keel_audit.writer import SegmentWriter


def test_untouched_log_is_valid_and_says_its_tail_is_unanchored(audit_log: AuditLog) -> None:
    report = audit_log.verify()
    assert report.verdict is Verdict.VALID and report.exit_code == 0
    assert report.kinds() == {Kind.UNVERIFIABLE_TAIL}
    assert (report.segments, report.records, report.events) == (5, 20, 20)


def test_untouched_log_with_its_checkpoint_is_valid_without_warnings(audit_log: AuditLog) -> None:
    report = audit_log.verify(checkpoint=audit_log.checkpoint())
    assert report.verdict is Verdict.VALID and report.problems == []


def test_modified_byte_in_a_record_is_tampered_and_names_the_record(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(1)
    rewrite(path, path.read_bytes().replace(b'"note":"event 6"', b'"note":"event X"'))
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED and report.exit_code == 2
    modified = [p for p in report.problems if p.kind is Kind.MODIFIED]
    assert [(p.segment, p.record) for p in modified] == [(1, f"{STREAM}:6")]


def test_modified_record_with_its_hash_recomputed_in_the_seal_fails_the_signature(
    audit_log: AuditLog,
) -> None:
    path = audit_log.segment_path(1)
    parsed = parse_segment(path.read_bytes())
    records = [r.replace(b"event 6", b"event X") for r in parsed.records]
    # The attacker has no key: reuse the old signature over a recomputed seal body.
    resign(path, audit_log.signer, records)
    forged = parse_segment(path.read_bytes())
    good_sig = base64.b64encode(parsed.signature)
    bad_line = forged.seal_line[: forged.seal_line.rfind(b',"sig":"') + 8] + good_sig + b'"}'
    write_lines(path, [*records, bad_line])
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.FORGED in report.kinds()


def test_non_canonical_reserialisation_of_a_record_is_tampered(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(0)
    records = lines(path)
    records[1] = records[1].replace(b'{"data":', b'{ "data" :')
    write_lines(path, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.MODIFIED in report.kinds()


def test_deleted_record_is_tampered_and_reported_missing(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(2)
    records = lines(path)
    del records[1]
    write_lines(path, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    missing = [p for p in report.problems if p.kind is Kind.MISSING]
    assert missing and {p.segment for p in missing} == {2}


def test_reordered_records_are_tampered_and_reported_reordered(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(3)
    records = lines(path)
    records[0], records[1] = records[1], records[0]
    write_lines(path, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.REORDERED in report.kinds()
    assert Kind.MISSING not in report.kinds()


def test_duplicated_record_is_tampered_and_reported_duplicated(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(3)
    records = lines(path)
    records.insert(2, records[1])
    write_lines(path, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.DUPLICATED in report.kinds()


def test_junk_after_the_seal_is_tampered(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(0)
    rewrite(path, path.read_bytes() + b"\n")
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.MALFORMED in report.kinds()


def test_deleted_middle_segment_is_reported_missing_with_its_sequence_range(audit_log: AuditLog) -> None:
    audit_log.segment_path(2).unlink()
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    missing = [p for p in report.problems if p.kind is Kind.MISSING]
    assert [p.segment for p in missing] == [2]
    assert "9..12" in missing[0].message


def test_two_deleted_middle_segments_are_each_reported(audit_log: AuditLog) -> None:
    audit_log.segment_path(1).unlink()
    audit_log.segment_path(2).unlink()
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.segment for p in report.problems if p.kind is Kind.MISSING] == [1, 2]


def test_deleted_first_segment_is_reported_missing(audit_log: AuditLog) -> None:
    audit_log.segment_path(0).unlink()
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.segment for p in report.problems if p.kind is Kind.MISSING] == [0]


def test_deleted_newest_segment_without_checkpoint_is_reported_as_an_unverifiable_tail(
    audit_log: AuditLog,
) -> None:
    audit_log.segment_path(4).unlink()
    report = audit_log.verify()
    # Nothing in the remaining files contradicts them: without outside state, say what is unknown.
    assert report.verdict is Verdict.VALID
    tail = [p for p in report.problems if p.kind is Kind.UNVERIFIABLE_TAIL]
    assert tail and "segment is 3" in tail[0].message


def test_deleted_newest_segment_is_incomplete_when_the_head_is_older_than_max_age(
    audit_log: AuditLog,
) -> None:
    audit_log.segment_path(4).unlink()
    now = audit_log.clock.now + timedelta(minutes=10)
    report = audit_log.verify(max_age=timedelta(minutes=5), now=now)
    assert report.verdict is Verdict.INCOMPLETE and report.exit_code == 3
    assert Kind.STALE_HEAD in report.kinds()


def test_deleted_newest_segment_with_a_trusted_checkpoint_is_tampered(audit_log: AuditLog) -> None:
    checkpoint = audit_log.checkpoint()
    audit_log.segment_path(4).unlink()
    audit_log.segment_path(3).unlink()
    report = audit_log.verify(checkpoint=checkpoint)
    assert report.verdict is Verdict.TAMPERED
    truncated = [p for p in report.problems if p.kind is Kind.TRUNCATED]
    assert truncated and "ends at segment 2" in truncated[0].message


def test_every_segment_deleted_is_tampered_with_a_checkpoint_and_incomplete_without(
    audit_log: AuditLog,
) -> None:
    checkpoint = audit_log.checkpoint()
    for index in range(5):
        audit_log.segment_path(index).unlink()
    assert audit_log.verify(checkpoint=checkpoint).verdict is Verdict.TAMPERED
    report = audit_log.verify()
    assert report.verdict is Verdict.INCOMPLETE and Kind.EMPTY in report.kinds()


def test_tail_truncated_mid_line_is_tampered_with_or_without_checkpoint(audit_log: AuditLog) -> None:
    checkpoint = audit_log.checkpoint()
    path = audit_log.segment_path(4)
    rewrite(path, path.read_bytes()[:-40])
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED and Kind.TRUNCATED in report.kinds()
    assert audit_log.verify(checkpoint=checkpoint).verdict is Verdict.TAMPERED


def test_swapped_segment_files_are_tampered_and_reported_reordered(audit_log: AuditLog) -> None:
    one, two = audit_log.segment_path(1), audit_log.segment_path(2)
    a, b = one.read_bytes(), two.read_bytes()
    rewrite(one, b)
    rewrite(two, a)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert {Kind.REORDERED, Kind.CHAIN_BROKEN} <= report.kinds()


def test_older_segment_replayed_at_a_newer_index_is_tampered(audit_log: AuditLog) -> None:
    rewrite(audit_log.segment_path(4), audit_log.segment_path(1).read_bytes())
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert {Kind.REORDERED, Kind.DUPLICATED} <= report.kinds()


def test_replaced_signature_is_tampered_and_reported_forged(audit_log: AuditLog) -> None:
    path = audit_log.segment_path(2)
    other = parse_segment(audit_log.segment_path(1).read_bytes())
    records = lines(path)
    seal = records[-1]
    records[-1] = seal[: seal.rfind(b',"sig":"') + 8] + base64.b64encode(other.signature) + b'"}'
    write_lines(path, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.segment for p in report.problems if p.kind is Kind.FORGED] == [2]


def test_segment_signed_with_an_unknown_key_is_tampered(audit_log: AuditLog) -> None:
    attacker = signer_from(66)
    path = audit_log.segment_path(2)
    records = [r.replace(b"event 9", b"event X") for r in parse_segment(path.read_bytes()).records]
    resign(path, attacker, records)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.UNKNOWN_KEY in report.kinds()
    assert Kind.CHAIN_BROKEN in report.kinds()  # segment 3 still links to the original segment 2


def test_key_used_after_its_validity_window_is_tampered(audit_log: AuditLog) -> None:
    keyring_file = KeyringFile(audit_log.layout.keyring)
    keyring = keyring_file.load()
    assert keyring is not None
    keyring_file.save(keyring.retire(audit_log.signer.key_id, 2, audit_log.clock.now))
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.segment for p in report.problems if p.kind is Kind.KEY_WINDOW] == [3, 4]


def test_retired_key_resigning_a_segment_after_rotation_is_tampered(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    writer = log.open()
    log.append(1, 2, 3, 4, 5)
    writer.rotate(signer_from(2))
    log.append(6, 7, 8, 9)
    assert log.verify().verdict is Verdict.VALID
    # The holder of the retired key rewrites the newest segment and signs it with the old key.
    newest = max(log.store.indices())
    resign(log.segment_path(newest), log.signer)
    report = log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert {Kind.KEY_WINDOW, Kind.FORGED} <= report.kinds()


def test_key_change_without_a_logged_key_change_record_is_tampered(audit_log: AuditLog) -> None:
    # An attacker who holds a second, published key cannot silently switch to it.
    other = signer_from(3)
    keyring_file = KeyringFile(audit_log.layout.keyring)
    keyring = keyring_file.load()
    assert keyring is not None
    keyring_file.save(
        keyring.with_key(KeyEntry(other.key_id, other.public_key, valid_from=audit_log.clock.now - timedelta(days=1)))
    )
    resign(audit_log.segment_path(4), other)
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert [p.segment for p in report.problems if p.kind is Kind.FORGED] == [4]


def test_declared_gap_in_the_source_sequence_is_incomplete(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    log.open()
    log.append(1, 2, 3, 6, 7, 8, 9)
    report = log.verify()
    assert report.verdict is Verdict.INCOMPLETE and report.exit_code == 3
    gaps = [p for p in report.problems if p.kind is Kind.GAP]
    assert len(gaps) == 1 and "4..5" in gaps[0].message


def test_removing_a_gap_record_to_hide_the_gap_is_tampered(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    log.open()
    log.append(1, 2, 3, 6, 7, 8, 9)
    path = log.segment_path(0)
    write_lines(path, [line for line in lines(path) if b'"t":"gap"' not in line])
    report = log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert Kind.MISSING in report.kinds() and Kind.GAP not in report.kinds()


def test_checkpoint_disagreeing_with_the_segment_at_its_index_is_a_fork(audit_log: AuditLog) -> None:
    real = audit_log.checkpoint()
    other = Checkpoint(STREAM, real.segment_index, real.last_seq, real.tree_size, real.tree_root, "00" * 32)
    report = audit_log.verify(checkpoint=other)
    assert report.verdict is Verdict.TAMPERED and Kind.FORK in report.kinds()


def test_signed_checkpoint_verifies_and_a_forged_one_is_rejected(audit_log: AuditLog) -> None:
    signed = audit_log.checkpoint().signed_by(audit_log.signer)
    assert audit_log.verify(checkpoint=Checkpoint.from_bytes(signed.to_bytes())).problems == []
    forged = audit_log.checkpoint().signed_by(signer_from(99))
    report = audit_log.verify(checkpoint=forged)
    assert report.verdict is Verdict.TAMPERED and Kind.FORGED in report.kinds()


def test_segment_from_another_stream_is_tampered(audit_log: AuditLog, tmp_path: Path) -> None:
    staging = make_log(tmp_path / "staging")
    writer = SegmentWriter(staging.store, signer_from(7), stream="STAGING", keyring=KeyringFile(staging.layout.keyring))
    for seq in range(1, 5):
        writer.append(SourceRecord("STAGING", seq, "keel.run.w.r-1.e.t", source(seq).time, {}, b"{}"))
    writer.flush()
    rewrite(audit_log.segment_path(4), staging.segment_path(0).read_bytes())
    report = audit_log.verify()
    assert report.verdict is Verdict.TAMPERED
    assert {Kind.FOREIGN, Kind.UNKNOWN_KEY} <= report.kinds()


@pytest.mark.parametrize("index", [0, 2, 4])
def test_stray_temp_file_is_only_a_warning(audit_log: AuditLog, index: int) -> None:
    (audit_log.layout.segments / f".tmp-{index:012d}.jsonl.1.abcd").write_bytes(b"partial")
    report = audit_log.verify()
    assert report.verdict is Verdict.VALID and Kind.STRAY in report.kinds()
