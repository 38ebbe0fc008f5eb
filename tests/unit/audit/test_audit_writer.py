"""The segment writer: sealing policy, gaps, resumption after a crash, refusal to overwrite, rotation."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from audit_tamper import rewrite
from audit_testlib import STREAM, T0, AuditLog, make_log, signer_from, source

from keel_audit.errors import AuditError, KeyMismatchError, SegmentExistsError, StoreCorruptError
from keel_audit.keyring import KeyringFile
from keel_audit.records import SourceRecord
from keel_audit.segment import parse_segment
from keel_audit.verify import Kind, Verdict
from keel_audit.writer import AppendStatus, SegmentPolicy, SegmentWriter


def _records(log: AuditLog) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index in log.store.indices():
        out.extend(msgspec.json.decode(line) for line in parse_segment(log.store.read(index)).records)
    return out


def _event_seqs(log: AuditLog) -> list[int]:
    return [int(r["seq"]) for r in _records(log) if r["t"] == "event"]


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return make_log(tmp_path / "audit")


def test_segment_closes_when_it_reaches_max_records(log: AuditLog) -> None:
    writer = log.open()
    results = [writer.append(source(seq)) for seq in range(1, 5)]
    assert [r.sealed for r in results[:3]] == [(), (), ()]
    sealed = results[3].sealed
    assert len(sealed) == 1 and sealed[0].seal.close_reason == "count"
    assert (sealed[0].first_seq, sealed[0].last_seq, results[3].ack_through) == (1, 4, 4)


def test_segment_closes_by_age_before_it_is_full(log: AuditLog) -> None:
    writer = log.open()
    writer.append(source(1))
    log.clock.advance(30)
    assert writer.tick() is None
    log.clock.advance(31)
    sealed = writer.tick()
    assert sealed is not None and sealed.seal.close_reason == "age" and sealed.seal.count == 1


def test_idle_period_produces_a_signed_empty_heartbeat_segment(log: AuditLog) -> None:
    log.policy = SegmentPolicy(max_records=4, max_age=timedelta(seconds=60))
    writer = log.open()
    log.append(1, 2)
    log.clock.advance(61)
    first = writer.tick()
    log.clock.advance(61)
    heartbeat = writer.tick()
    assert first is not None and heartbeat is not None
    assert heartbeat.seal.close_reason == "heartbeat" and heartbeat.seal.count == 0
    assert (heartbeat.first_seq, heartbeat.last_seq) == (3, 2)  # empty range right after seq 2
    log.append(3)
    writer.flush()
    report = log.verify()
    assert report.verdict is Verdict.VALID and report.segments == 3


def test_sequence_jump_is_recorded_as_a_gap_record_not_skipped(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 5)
    assert log.writer is not None
    log.writer.flush()
    gaps = [r for r in _records(log) if r["t"] == "gap"]
    assert [(g["from_seq"], g["to_seq"]) for g in gaps] == [(3, 4)]


def test_first_segment_of_a_new_log_starts_at_start_seq(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit")
    writer = SegmentWriter(log.store, log.signer, stream=STREAM, keyring=KeyringFile(log.layout.keyring), start_seq=100)
    assert writer.cursor == 99
    writer.append(source(100))
    assert writer.flush() is not None
    assert log.verify().verdict is Verdict.VALID


def test_redelivery_inside_the_open_segment_is_not_acknowledged_early(log: AuditLog) -> None:
    writer = log.open()
    writer.append(source(1))
    again = writer.append(source(1))
    assert again.status is AppendStatus.PENDING_DUPLICATE and again.ack_through is None


def test_crash_after_storing_a_segment_before_acking_produces_no_duplicate_and_no_hole(log: AuditLog) -> None:
    writer = log.open()
    for seq in range(1, 7):  # seq 1..4 sealed, 5..6 only in memory
        writer.append(source(seq))
    del writer  # crash: nothing was acknowledged
    resumed = log.open()
    assert (resumed.cursor, resumed.next_index) == (4, 1)
    statuses = [resumed.append(source(seq)).status for seq in range(1, 11)]  # JetStream redelivers all
    assert statuses[:4] == [AppendStatus.COVERED] * 4
    assert statuses[4:] == [AppendStatus.APPENDED] * 6
    resumed.flush()
    assert _event_seqs(log) == list(range(1, 11))
    assert log.verify().verdict is Verdict.VALID


def test_covered_redelivery_can_be_acknowledged_through_the_cursor(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 3, 4)
    resumed = log.open()
    result = resumed.append(source(2))
    assert result.status is AppendStatus.COVERED and result.ack_through == 4


def test_store_refuses_to_overwrite_a_segment(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 3, 4)
    original = log.store.read(0)
    with pytest.raises(SegmentExistsError):
        log.store.write(0, b"anything")
    assert log.store.read(0) == original


def test_second_writer_for_an_already_covered_range_is_refused_and_must_reopen(log: AuditLog) -> None:
    first = log.open()
    second = log.open()
    for seq in range(1, 5):
        first.append(source(seq))
    for seq in range(1, 4):
        second.append(source(seq))
    with pytest.raises(SegmentExistsError):
        second.append(source(4))
    with pytest.raises(AuditError, match="reopened"):
        second.append(source(5))
    assert _event_seqs(log) == [1, 2, 3, 4]


def test_writer_refuses_to_resume_on_a_tampered_newest_segment(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 3, 4)
    path = log.segment_path(0)
    rewrite(path, path.read_bytes().replace(b"event 2", b"event X"))
    with pytest.raises(StoreCorruptError):
        log.open()


def test_writer_refuses_a_key_the_log_never_changed_to(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 3, 4)
    with pytest.raises(KeyMismatchError):
        log.open(signer_from(9))


def test_rotation_logs_a_key_change_and_publishes_both_windows(log: AuditLog) -> None:
    writer = log.open()
    log.append(1, 2, 3)
    new = signer_from(2)
    sealed = writer.rotate(new)
    log.append(4, 5, 6, 7)
    changes = [r for r in _records(log) if r["t"] == "key_change"]
    assert [(c["old_key_id"], c["new_key_id"], c["from_segment"]) for c in changes] == [
        (log.signer.key_id, new.key_id, sealed.index + 1)
    ]
    old_entry, new_entry = log.keyring.get(log.signer.key_id), log.keyring.get(new.key_id)
    assert old_entry is not None and new_entry is not None
    assert (old_entry.last_segment, new_entry.first_segment) == (sealed.index, sealed.index + 1)
    assert log.verify().verdict is Verdict.VALID
    with pytest.raises(KeyMismatchError):
        log.open()  # the old key may not continue the log
    log.open(new).append(source(8))


def test_crash_between_rotation_segment_and_keyring_update_is_repaired_on_resume(log: AuditLog) -> None:
    writer = log.open()
    log.append(1, 2)
    keyring_before = log.layout.keyring.read_bytes()
    writer.rotate(signer_from(2))
    log.layout.keyring.write_bytes(keyring_before)  # as if the process died before publishing it
    resumed = log.open(signer_from(2))
    resumed.append(source(3))
    resumed.flush()
    assert log.verify().verdict is Verdict.VALID


def test_only_the_dedupe_header_and_keel_headers_are_kept(log: AuditLog) -> None:
    writer = log.open()
    headers = {
        "Nats-Msg-Id": "m-1",
        "Keel-Actor": "router",
        "traceparent": "x",
        "Nats-Expected-Last-Sequence": "3",
    }
    writer.append(SourceRecord(STREAM, 1, "keel.run.w.r-1.e.t", T0, headers, b"{}"))
    writer.flush()
    assert _records(log)[0]["headers"] == {"Keel-Actor": "router", "Nats-Msg-Id": "m-1"}


def test_json_body_is_stored_canonically_and_other_bodies_as_exact_base64(log: AuditLog) -> None:
    writer = log.open()
    bodies = [
        b'{"b": 1, "a": [true, null]}',
        b"\xff\xfe not json",
        b'{"a": 1, "a": 2}',
        b'{"n": 9007199254740993}',
    ]
    for seq, body in enumerate(bodies, start=1):
        writer.append(SourceRecord(STREAM, seq, "keel.run.w.r-1.e.t", T0, {}, body))
    writer.flush()
    line = parse_segment(log.store.read(0)).records[0]
    assert b'"data":{"a":[true,null],"b":1}' in line
    records = _records(log)
    assert [base64.b64decode(str(r["data_b64"])) for r in records[1:]] == bodies[1:]
    assert json.loads(json.dumps(records[0]["data"])) == {"a": [True, None], "b": 1}


def test_silence_while_the_writer_was_down_is_reported_as_a_warning(log: AuditLog) -> None:
    log.open()
    log.append(1, 2, 3, 4)
    log.clock.advance(3600)
    log.open()
    log.append(5, 6, 7, 8)
    report = log.verify()
    assert report.verdict is Verdict.VALID and Kind.SILENCE in report.kinds()
