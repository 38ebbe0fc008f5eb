"""Reconstruction of one run from the log, each record flagged verified or not.

A record is *verified* when its segment's seal is signed by a known key valid for that segment and the
record's bytes match the leaf hash the seal lists for it. Records of a damaged segment that still
match are verified; ones that do not are yielded with ``verified=False`` rather than hidden, so a
reader sees the whole claimed history and which parts of it are proven. Gap records are yielded too:
the missing sequences could have belonged to this run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from keel_audit.erasure import PayloadStore
from keel_audit.keyring import Keyring
from keel_audit.records import ERASURE, EVENT, GAP, event_type_of, run_id_of
from keel_audit.redaction import check_payload, restore
from keel_audit.store import SegmentStore
from keel_audit.verify import SegmentCheck, iter_segment_checks


@dataclass(frozen=True, slots=True)
class RunRecord:
    segment_index: int
    leaf_index: int
    verified: bool
    #: The record as logged, with redacted values restored when their clear payload matches.
    record: dict[str, Any]
    #: "clear" (nothing redacted), "restored", "redacted" (clear payload unavailable) or "mismatch".
    payload: str

    @property
    def kind(self) -> str:
        return str(self.record.get("t"))

    @property
    def seq(self) -> int | None:
        seq = self.record.get("seq", self.record.get("from_seq"))
        return seq if isinstance(seq, int) else None

    @property
    def time(self) -> str | None:
        value = self.record.get("time", self.record.get("at"))
        return value if isinstance(value, str) else None

    @property
    def event_type(self) -> str:
        subject = self.record.get("subject")
        return event_type_of(subject) if isinstance(subject, str) else self.kind

    @property
    def body(self) -> Any:
        return self.record.get("data", self.record.get("data_b64"))


def _with_payload(record: dict[str, Any], payloads: PayloadStore | None) -> tuple[dict[str, Any], str]:
    if not record.get("redacted"):
        return record, "clear"
    payload = None if payloads is None else payloads.get(str(record.get("id")))
    if payload is None:
        return record, "redacted"
    if check_payload(record, payload):
        return record, "mismatch"
    return restore(record, payload), "restored"


def _records(store: SegmentStore, keyring: Keyring) -> Iterator[tuple[SegmentCheck, int, dict[str, Any]]]:
    """Every decodable record of the log in log order, with its segment's check and its position there."""
    for check in iter_segment_checks(store, keyring):
        if check.parsed is None:
            continue
        for position, record in enumerate(check.records):
            if record is not None:
                yield check, position, record


def _row(check: SegmentCheck, position: int, record: dict[str, Any], payloads: PayloadStore | None) -> RunRecord:
    assert check.parsed is not None
    shown, payload_state = _with_payload(record, payloads)
    return RunRecord(
        segment_index=check.index,
        leaf_index=check.parsed.seal.leaf_first + position,
        verified=check.authentic and check.record_ok[position],
        record=shown,
        payload=payload_state,
    )


def _run_of(record: dict[str, Any]) -> str | None:
    subject = record.get("subject")
    return run_id_of(subject) if isinstance(subject, str) else None


def run_records(
    store: SegmentStore, keyring: Keyring, run_id: str, *, payloads: PayloadStore | None = None
) -> Iterator[RunRecord]:
    """The records of run ``run_id`` (the 4th token of ``keel.run.<workflow>.<run_id>.<emitter>.<type>``)
    in log order, plus the gaps and the erasures of its records."""
    needle = f".{run_id}.".encode()
    mine: set[str] = set()
    for check, position, record in _records(store, keyring):
        kind = record.get("t")
        if kind == EVENT:
            assert check.parsed is not None
            # A byte search first: most records of a long log belong to other runs.
            if needle not in check.parsed.records[position] or _run_of(record) != run_id:
                continue
            mine.add(str(record.get("id")))
        elif not (kind == GAP or (kind == ERASURE and record.get("target") in mine)):
            continue
        yield _row(check, position, record, payloads)


def records_by_run(
    store: SegmentStore, keyring: Keyring, *, payloads: PayloadStore | None = None
) -> dict[str, list[RunRecord]]:
    """What `run_records` gives for every run of the log, from one pass over it: reconstructing each of
    thousands of runs (a chaos test, a bulk export) would otherwise read the whole log once per run."""
    runs: dict[str, list[RunRecord]] = {}
    owner: dict[str, str] = {}  # event record id -> its run
    gaps: list[RunRecord] = []
    for check, position, record in _records(store, keyring):
        kind = record.get("t")
        if kind == EVENT:
            run_id = _run_of(record)
            if run_id is not None:
                owner[str(record.get("id"))] = run_id
                runs.setdefault(run_id, []).append(_row(check, position, record, payloads))
        elif kind == ERASURE and record.get("target") in owner:
            runs[owner[str(record.get("target"))]].append(_row(check, position, record, payloads))
        elif kind == GAP:
            gaps.append(_row(check, position, record, payloads))
    if gaps:
        # A gap could have held records of any run, so every run gets each one, in log order.
        for run_id, rows in runs.items():
            runs[run_id] = sorted([*rows, *gaps], key=lambda row: row.leaf_index)
    return runs
