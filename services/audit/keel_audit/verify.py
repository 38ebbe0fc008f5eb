"""Verification of a stored log: every record hash, root, chain link, signature, key window, sequence
continuity, and the tail against a trusted checkpoint. Each problem is named; the verdict maps to the
exit codes 0 valid, 2 tampered, 3 incomplete (1 is reserved for operational errors, raised as
AuditError).

Segments are walked from index 0 upwards, never from the newest one found, and every missing index is
reported with the range it would have covered (the CloudTrail ``validate-logs`` lessons in the anchors
doc). Without a trusted checkpoint the newest segments could have been deleted undetectably, so the
report says so (``unverifiable_tail``), and ``max_age`` turns a stale head into INCOMPLETE: the writer
seals a heartbeat segment even when idle, so an old head means the writer stopped or the tail is gone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, Protocol

import msgspec

from keel_audit.canonical import format_time, parse_time
from keel_audit.checkpoint import Checkpoint
from keel_audit.erasure import PayloadStore
from keel_audit.errors import AuditError
from keel_audit.keyring import Keyring
from keel_audit.merkle import frontier_append, frontier_root, leaf_hash, root_of
from keel_audit.records import ERASURE, EVENT, GAP, KEY_CHANGE
from keel_audit.redaction import check_payload
from keel_audit.segment import ParsedSegment, SegmentFormatError, parse_segment
from keel_audit.signing import decode_public_key, verify_signature
from keel_audit.store import SegmentStore


class Verdict(IntEnum):
    """The overall verdict; its value is the CLI exit code."""

    VALID = 0
    ERROR = 1
    TAMPERED = 2
    INCOMPLETE = 3


class Severity(StrEnum):
    TAMPERED = "tampered"
    INCOMPLETE = "incomplete"
    WARNING = "warning"


class Kind(StrEnum):
    MODIFIED = "modified"
    MISSING = "missing"
    REORDERED = "reordered"
    DUPLICATED = "duplicated"
    TRUNCATED = "truncated"
    FORGED = "forged"
    UNKNOWN_KEY = "unknown_key"
    KEY_WINDOW = "key_outside_window"
    CHAIN_BROKEN = "chain_broken"
    MALFORMED = "malformed"
    FOREIGN = "foreign"
    FORK = "fork"
    GAP = "gap"
    STALE_HEAD = "stale_head"
    EMPTY = "empty_log"
    PAYLOAD_MISSING = "payload_missing"
    UNVERIFIABLE_TAIL = "unverifiable_tail"
    SILENCE = "silence"
    TIME_ANOMALY = "time_anomaly"
    STRAY = "stray_file"
    ERASURE_PENDING = "erasure_pending"
    KEYRING_NOT_INDEPENDENT = "keyring_not_independent"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: Kind
    severity: Severity
    message: str
    segment: int | None = None
    record: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "message": self.message,
            "segment": self.segment,
            "record": self.record,
        }


@dataclass(frozen=True, slots=True)
class Head:
    segment_index: int
    last_seq: int
    tree_size: int
    tree_root: str
    digest: str
    closed_at: str
    key_id: str


@dataclass(slots=True)
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    events: int = 0
    head: Head | None = None
    checkpoint: Checkpoint | None = None

    @property
    def verdict(self) -> Verdict:
        severities = {p.severity for p in self.problems}
        if Severity.TAMPERED in severities:
            return Verdict.TAMPERED
        if Severity.INCOMPLETE in severities:
            return Verdict.INCOMPLETE
        return Verdict.VALID

    @property
    def exit_code(self) -> int:
        return int(self.verdict)

    def kinds(self) -> set[Kind]:
        return {p.kind for p in self.problems}

    def to_json(self) -> dict[str, Any]:
        head = self.head
        return {
            "verdict": self.verdict.name.lower(),
            "exit_code": self.exit_code,
            "segments": self.segments,
            "records": self.records,
            "events": self.events,
            "head": None
            if head is None
            else {
                "segment_index": head.segment_index,
                "last_seq": head.last_seq,
                "tree_size": head.tree_size,
                "tree_root": head.tree_root,
                "digest": head.digest,
                "closed_at": head.closed_at,
                "key_id": head.key_id,
            },
            "checkpoint": None if self.checkpoint is None else self.checkpoint.body(),
            "problems": [p.to_json() for p in self.problems],
        }


# -- one segment ----------------------------------------------------------------------------------


class _Reporter(Protocol):
    """Records one problem of the segment being checked."""

    def __call__(
        self, kind: Kind, message: str, record: str | None = None, sev: Severity = Severity.TAMPERED
    ) -> None: ...


@dataclass(slots=True)
class SegmentCheck:
    """What one segment file proves on its own."""

    index: int
    parsed: ParsedSegment | None
    problems: list[Problem]
    #: The seal is signed by a known key, valid for this segment, and the signature verifies.
    authentic: bool = False
    #: Per record line: decoded JSON (None if undecodable) and whether its hash is in the signed seal.
    records: list[dict[str, Any] | None] = field(default_factory=list)
    record_ok: list[bool] = field(default_factory=list)


def _label(record: dict[str, Any] | None, line_no: int) -> str:
    if record is None:
        return f"line {line_no + 1} (not JSON)"
    rid = record.get("id")
    return f"record {rid}" if isinstance(rid, str) else f"line {line_no + 1}"


def _record_id(record: dict[str, Any] | None) -> str | None:
    rid = None if record is None else record.get("id")
    return rid if isinstance(rid, str) else None


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def check_segment(raw: bytes, index: int, keyring: Keyring) -> SegmentCheck:
    problems: list[Problem] = []

    def problem(kind: Kind, message: str, record: str | None = None, sev: Severity = Severity.TAMPERED) -> None:
        problems.append(Problem(kind, sev, message, index, record))

    try:
        parsed = parse_segment(raw)
    except SegmentFormatError as exc:
        kind = Kind.TRUNCATED if raw and not raw.endswith(b"\n") else Kind.MALFORMED
        problem(kind, f"segment {index}: {exc}")
        return SegmentCheck(index, None, problems)
    seal = parsed.seal
    check = SegmentCheck(index, parsed, problems)
    if not parsed.well_terminated:
        problem(Kind.MALFORMED, f"segment {index}: data after the seal line (or its newline is missing)")
    if seal.segment_index != index:
        problem(Kind.REORDERED, f"segment file {index} holds segment {seal.segment_index} (moved or swapped)")
    if seal.stream != keyring.stream:
        problem(Kind.FOREIGN, f"segment {index} belongs to stream {seal.stream}, not {keyring.stream}")

    entry = keyring.get(seal.key_id)
    if entry is None:
        problem(Kind.UNKNOWN_KEY, f"segment {index} is signed by key {seal.key_id}, which is not in the keyring")
    elif not verify_signature(entry.public_key, parsed.signature, parsed.signed_message):
        problem(Kind.FORGED, f"segment {index}: seal signature by {seal.key_id} does not verify")
    else:
        try:
            closed_at = parse_time(seal.closed_at)
        except ValueError:
            problem(Kind.MALFORMED, f"segment {index}: closed_at {seal.closed_at!r} is not a timestamp")
        else:
            window = entry.window_problem(seal.segment_index, closed_at)
            if window is not None:
                problem(Kind.KEY_WINDOW, f"segment {index}: {window}")
            else:
                check.authentic = True

    listed = seal.leaf_hashes
    actual = [leaf_hash(line).hex() for line in parsed.records]
    check.records = [_decode(line) for line in parsed.records]
    if actual == listed:
        check.record_ok = [True] * len(actual)
    else:
        check.record_ok = _diagnose_records(index, actual, listed, check.records, problem)

    _check_seal_arithmetic(index, parsed, problem)
    _check_sequence(index, parsed, check.records, problems, problem)
    return check


def _diagnose_records(
    index: int, actual: list[str], listed: list[str], records: list[dict[str, Any] | None], problem: _Reporter
) -> list[bool]:
    """Name what happened to the records of a segment whose lines differ from its signed hash list."""
    position = {h: p for p, h in reversed(list(enumerate(listed)))}
    ok = [False] * len(actual)
    seen: set[str] = set()
    unknown: list[int] = []
    highest = -1
    for line_no, h in enumerate(actual):
        p = position.get(h)
        if p is None:
            unknown.append(line_no)
            continue
        label = _label(records[line_no], line_no)
        if h in seen:
            problem(
                Kind.DUPLICATED,
                f"segment {index}: {label} appears more than once",
                _record_id(records[line_no]),
            )
            continue
        seen.add(h)
        ok[line_no] = True
        if p < highest:
            problem(Kind.REORDERED, f"segment {index}: {label} is out of order", _record_id(records[line_no]))
        highest = max(highest, p)
    absent = [p for p, h in enumerate(listed) if h not in seen]
    # An unknown line standing where a listed record is absent is that record, modified; the rest are
    # insertions and deletions.
    pairs = min(len(unknown), len(absent))
    for line_no in unknown[:pairs]:
        label = _label(records[line_no], line_no)
        problem(
            Kind.MODIFIED,
            f"segment {index}: {label} does not match its signed hash",
            _record_id(records[line_no]),
        )
    for line_no in unknown[pairs:]:
        label = _label(records[line_no], line_no)
        problem(
            Kind.MODIFIED,
            f"segment {index}: {label} is not in the seal (inserted)",
            _record_id(records[line_no]),
        )
    for p in absent[pairs:]:
        problem(Kind.MISSING, f"segment {index}: record at position {p} (leaf {listed[p][:16]}…) is missing")
    return ok


def _check_seal_arithmetic(index: int, parsed: ParsedSegment, problem: _Reporter) -> None:
    seal = parsed.seal
    # Sizes and hex were checked by parse_seal; here the roots must follow from the listed hashes.
    listed = [bytes.fromhex(h) for h in seal.leaf_hashes]
    frontier = [bytes.fromhex(h) for h in seal.prev_frontier]
    if root_of(listed).hex() != seal.segment_root:
        problem(Kind.MALFORMED, f"segment {index}: segment_root does not match the listed leaf hashes")
    for size, h in enumerate(listed, start=seal.leaf_first):
        frontier_append(frontier, size, h)
    if frontier_root(frontier).hex() != seal.tree_root:
        problem(Kind.MALFORMED, f"segment {index}: tree_root does not follow from prev_frontier and the leaves")


def _check_sequence(
    index: int,
    parsed: ParsedSegment,
    records: list[dict[str, Any] | None],
    problems: list[Problem],
    problem: _Reporter,
) -> None:
    seal = parsed.seal
    already = {p.kind for p in problems}
    starts: list[int] = []
    ranges: list[tuple[int, int]] = []
    events = gaps = 0
    times: list[str] = []
    for record in records:
        if record is None:
            continue
        kind = record.get("t")
        if kind == EVENT:
            lo = hi = record.get("seq")
            events += 1
            if isinstance(record.get("time"), str):
                times.append(record["time"])
        elif kind == GAP:
            lo, hi = record.get("from_seq"), record.get("to_seq")
            gaps += 1
            problem(
                Kind.GAP,
                f"segment {index}: stream sequences {lo}..{hi} never reached the audit log (declared gap)",
                record.get("id"),
                Severity.INCOMPLETE,
            )
        else:
            continue
        if isinstance(lo, int) and isinstance(hi, int):
            starts.append(lo)
            ranges.append((lo, hi))

    def add(kind: Kind, message: str) -> None:
        # The hash comparison names a reordering or duplication more precisely; for missing records
        # only the sequence view can say which sequences are gone, so that one is always added.
        if kind is Kind.MISSING or kind not in already:
            problem(kind, message)

    if len(set(starts)) != len(starts):
        dup = sorted({s for s in starts if starts.count(s) > 1})
        add(Kind.DUPLICATED, f"segment {index}: stream sequence(s) {dup[:5]} recorded more than once")
    if any(b <= a for a, b in itertools.pairwise(starts)):
        add(Kind.REORDERED, f"segment {index}: stream sequences are not in ascending order")
    expected = seal.first_seq
    for lo, hi in sorted(set(ranges)):
        if lo > expected:
            add(
                Kind.MISSING,
                f"segment {index}: stream sequences {expected}..{lo - 1} are missing (undeclared gap)",
            )
        expected = max(expected, hi + 1)
    if expected <= seal.last_seq:
        add(Kind.MISSING, f"segment {index}: stream sequences {expected}..{seal.last_seq} are missing")
    elif expected > seal.last_seq + 1:
        add(Kind.MALFORMED, f"segment {index}: records run past the seal's last_seq {seal.last_seq}")
    if seal.event_count != events or seal.gap_count != gaps:
        add(
            Kind.MISSING,
            f"segment {index}: the seal counts {seal.event_count} events and {seal.gap_count} gaps, "
            f"the records {events} and {gaps}",
        )
    if times and (min(times) != seal.time_first or max(times) != seal.time_last):
        add(Kind.MODIFIED, f"segment {index}: event times do not match the seal's time range")


# -- the whole log --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    """State carried from one segment to the next."""

    check: SegmentCheck | None = None
    tree_size: int = 0
    frontier: list[bytes] = field(default_factory=list)
    announced_key: tuple[str, str, int] | None = None  # (new key id, public key b64, from segment)


def iter_segment_checks(store: SegmentStore, keyring: Keyring) -> Iterable[SegmentCheck]:
    for index in store.indices():
        try:
            raw = store.read(index)
        except KeyError:
            continue
        yield check_segment(raw, index, keyring)


def verify_log(
    store: SegmentStore,
    keyring: Keyring,
    *,
    checkpoint: Checkpoint | None = None,
    payloads: PayloadStore | None = None,
    max_age: timedelta | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Verify the whole log in ``store`` against ``keyring`` (which must come from a trusted copy)."""
    report = VerifyReport(checkpoint=checkpoint)
    problems = report.problems
    walk = _Walk()
    expected_index = 0
    heads: dict[int, tuple[str, int, int, str]] = {}  # index -> (digest, last_seq, tree_size, root)
    redacted: dict[str, int] = {}  # record id -> segment, whose clear payload is absent
    erased: set[str] = set()

    for name in store.strays():
        problems.append(Problem(Kind.STRAY, Severity.WARNING, f"unexpected file {name} among the segments"))

    for check in iter_segment_checks(store, keyring):
        index = check.index
        report.segments += 1
        problems.extend(check.problems)
        if index > expected_index:
            _report_missing_segments(expected_index, index, walk, check, problems)
            walk.check = None
        parsed = check.parsed
        if parsed is not None:
            seal = parsed.seal
            report.records += len(parsed.records)
            report.events += seal.event_count
            _check_link(index, parsed, walk, problems)
            heads[index] = (parsed.digest, seal.last_seq, seal.tree_size, seal.tree_root)
            report.head = Head(
                index,
                seal.last_seq,
                seal.tree_size,
                seal.tree_root,
                parsed.digest,
                seal.closed_at,
                seal.key_id,
            )
            # parse_seal guarantees well-formed hex and a frontier that fits leaf_first.
            walk.frontier = [bytes.fromhex(h) for h in seal.prev_frontier]
            for size, h in enumerate(seal.leaf_hashes, start=seal.leaf_first):
                frontier_append(walk.frontier, size, bytes.fromhex(h))
            walk.tree_size = seal.tree_size
            walk.announced_key = None
            for line_no, record in enumerate(check.records):
                if record is None or not check.record_ok[line_no]:
                    continue
                kind = record.get("t")
                if kind == KEY_CHANGE:
                    walk.announced_key = (
                        str(record.get("new_key_id")),
                        str(record.get("new_public_key")),
                        int(record.get("from_segment", -1)),
                    )
                    _check_announced_key(index, record, keyring, problems)
                elif kind == ERASURE:
                    erased.add(str(record.get("target")))
                elif kind == EVENT and payloads is not None and record.get("redacted"):
                    _check_payload(index, record, payloads, redacted, problems)
        walk.check = check
        expected_index = index + 1

    _check_tail(report, heads, checkpoint, keyring, max_age, now)
    for record_id, segment in sorted(redacted.items()):
        if record_id not in erased:
            problems.append(
                Problem(
                    Kind.PAYLOAD_MISSING,
                    Severity.INCOMPLETE,
                    f"clear payload of {record_id} is missing and no erasure record explains it",
                    segment,
                    record_id,
                )
            )
    if payloads is not None:
        for record_id in sorted(erased):
            if payloads.get(record_id) is not None:
                problems.append(
                    Problem(
                        Kind.ERASURE_PENDING,
                        Severity.WARNING,
                        f"{record_id} was erased in the log but its clear payload is still stored",
                        record=record_id,
                    )
                )
    return report


def _report_missing_segments(
    expected: int, found: int, walk: _Walk, check: SegmentCheck, problems: list[Problem]
) -> None:
    after = walk.check.parsed.seal.last_seq if walk.check and walk.check.parsed else None
    before = check.parsed.seal.first_seq if check.parsed else None
    span = "" if after is None or before is None else f", stream sequences {after + 1}..{before - 1}"
    for missing in range(expected, found):
        problems.append(
            Problem(
                Kind.MISSING,
                Severity.TAMPERED,
                f"segment {missing} is missing (of {expected}..{found - 1}{span})",
                missing,
            )
        )


def _check_link(index: int, parsed: ParsedSegment, walk: _Walk, problems: list[Problem]) -> None:
    """The links from this segment to its predecessor: digest, tree, sequence, key succession."""
    seal = parsed.seal

    def problem(kind: Kind, message: str, sev: Severity = Severity.TAMPERED) -> None:
        problems.append(Problem(kind, sev, message, index))

    prev = walk.check.parsed if walk.check is not None else None
    if index == 0:
        if seal.prev_digest is not None or seal.leaf_first != 0:
            problem(Kind.MISSING, "segment 0 links to a predecessor: the start of the log is missing")
        return
    if prev is None:
        return  # the predecessor is missing or unreadable, already reported
    if seal.prev_digest != prev.digest:
        problem(Kind.CHAIN_BROKEN, f"segment {index}: prev_digest does not match segment {index - 1}")
    if seal.leaf_first != walk.tree_size or [h.hex() for h in walk.frontier] != seal.prev_frontier:
        problem(Kind.CHAIN_BROKEN, f"segment {index}: its tree does not extend segment {index - 1}'s tree")
    if seal.first_seq <= prev.seal.last_seq:
        problem(
            Kind.DUPLICATED,
            f"segment {index} covers stream sequences from {seal.first_seq}, already covered up to "
            f"{prev.seal.last_seq} by segment {index - 1}",
        )
    elif seal.first_seq > prev.seal.last_seq + 1:
        problem(
            Kind.MISSING,
            f"stream sequences {prev.seal.last_seq + 1}..{seal.first_seq - 1} are in no segment "
            f"(between segments {index - 1} and {index})",
        )
    announced = walk.announced_key
    if announced is not None and (seal.key_id != announced[0] or announced[2] != index):
        problem(
            Kind.FORGED,
            f"segment {index} is signed by {seal.key_id}, but segment {index - 1} announced {announced[0]}",
        )
    elif announced is None and seal.key_id != prev.seal.key_id:
        problem(
            Kind.FORGED,
            f"segment {index} is signed by {seal.key_id}, but segment {index - 1} (key {prev.seal.key_id}) "
            "logged no key change",
        )
    try:
        gap = parse_time(seal.opened_at) - parse_time(prev.seal.closed_at)
    except ValueError:
        return
    if gap < timedelta(0):
        problem(Kind.TIME_ANOMALY, f"segment {index} opened before segment {index - 1} closed", Severity.WARNING)
    elif gap > timedelta(seconds=2 * seal.policy.heartbeat_s):
        problem(
            Kind.SILENCE,
            f"no segment between {prev.seal.closed_at} and {seal.opened_at}: the audit writer was not running",
            Severity.WARNING,
        )


def _check_announced_key(index: int, record: dict[str, Any], keyring: Keyring, problems: list[Problem]) -> None:
    entry = keyring.get(str(record.get("new_key_id")))
    try:
        announced = decode_public_key(str(record.get("new_public_key")))
    except ValueError:
        announced = b""
    if entry is None:
        problems.append(
            Problem(
                Kind.UNKNOWN_KEY,
                Severity.TAMPERED,
                f"segment {index} announces key {record.get('new_key_id')}, which is not in the keyring",
                index,
            )
        )
    elif entry.public_key != announced:
        problems.append(
            Problem(
                Kind.FORGED,
                Severity.TAMPERED,
                f"segment {index} announces a public key for {entry.key_id} that differs from the keyring's",
                index,
            )
        )


def _check_payload(
    index: int,
    record: dict[str, Any],
    payloads: PayloadStore,
    redacted: dict[str, int],
    problems: list[Problem],
) -> None:
    record_id = str(record.get("id"))
    try:
        payload = payloads.get(record_id)
    except AuditError as exc:
        problems.append(
            Problem(Kind.MODIFIED, Severity.TAMPERED, f"clear payload of {record_id}: {exc}", index, record_id)
        )
        return
    if payload is None:
        redacted[record_id] = index
        return
    bad = check_payload(record, payload)
    if bad:
        problems.append(
            Problem(
                Kind.MODIFIED,
                Severity.TAMPERED,
                f"clear payload of {record_id} does not match its commitment at {bad}",
                index,
                record_id,
            )
        )


def _check_tail(
    report: VerifyReport,
    heads: dict[int, tuple[str, int, int, str]],
    checkpoint: Checkpoint | None,
    keyring: Keyring,
    max_age: timedelta | None,
    now: datetime | None,
) -> None:
    problems = report.problems
    head = report.head
    if checkpoint is not None:
        if checkpoint.stream != keyring.stream:
            raise AuditError(f"checkpoint is for stream {checkpoint.stream}, not {keyring.stream}")
        bad_signature = checkpoint.signature_problem(keyring)
        if bad_signature is not None:
            problems.append(Problem(Kind.FORGED, Severity.TAMPERED, bad_signature))
        if head is None or checkpoint.segment_index > head.segment_index:
            found = "no segments" if head is None else f"segment {head.segment_index} (stream seq {head.last_seq})"
            problems.append(
                Problem(
                    Kind.TRUNCATED,
                    Severity.TAMPERED,
                    f"the log ends at {found}, but the trusted checkpoint reaches segment "
                    f"{checkpoint.segment_index} (stream seq {checkpoint.last_seq}, "
                    f"tree size {checkpoint.tree_size})",
                )
            )
        else:
            at = heads.get(checkpoint.segment_index)
            expected = (
                checkpoint.segment_digest,
                checkpoint.last_seq,
                checkpoint.tree_size,
                checkpoint.tree_root,
            )
            if at is not None and at != expected:
                problems.append(
                    Problem(
                        Kind.FORK,
                        Severity.TAMPERED,
                        f"segment {checkpoint.segment_index} differs from the trusted checkpoint "
                        "(digest, sequence or tree)",
                        checkpoint.segment_index,
                    )
                )
    elif head is not None:
        problems.append(
            Problem(
                Kind.UNVERIFIABLE_TAIL,
                Severity.WARNING,
                f"no trusted checkpoint: the log's newest segment is {head.segment_index} "
                f"(stream seq {head.last_seq}, sealed {head.closed_at}); "
                "deletion of newer segments cannot be detected",
            )
        )
    if head is None and checkpoint is None:
        problems.append(Problem(Kind.EMPTY, Severity.INCOMPLETE, "no segments: nothing is proven"))
    if head is not None and max_age is not None and now is not None:
        age = now - parse_time(head.closed_at)
        if age > max_age:
            problems.append(
                Problem(
                    Kind.STALE_HEAD,
                    Severity.INCOMPLETE,
                    f"the newest segment was sealed {format_time(parse_time(head.closed_at))}, {age} ago "
                    f"(more than {max_age}): the writer stopped or newer segments are missing",
                )
            )
