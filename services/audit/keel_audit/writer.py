"""The segment writer: turns the ordered stream into signed, append-only segments.

The NATS wiring drives it: ``append`` every delivered message, ``tick`` on idle, ``flush`` on shutdown,
and acknowledge stream messages only up to ``AppendResult.ack_through`` (sequences inside a durably
stored segment). The writer is resumable: on construction it reads the newest stored segment to learn
the cursor (last covered sequence), the previous digest and the tree state, so after a crash between
storing a segment and acknowledging its messages, the redelivered messages are recognised as covered
and nothing is written twice or skipped. Input must arrive in stream order (an ordered consumer, or
max_ack_pending=1): a sequence that jumps ahead is recorded as a gap, never skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from keel_audit.canonical import canonical_bytes, format_time, parse_time
from keel_audit.erasure import PayloadStore
from keel_audit.errors import (
    AuditError,
    KeyMismatchError,
    RecordNotFoundError,
    SegmentExistsError,
    StoreCorruptError,
)
from keel_audit.keyring import KeyEntry, Keyring, KeyringStore
from keel_audit.merkle import frontier_append, frontier_root, leaf_hash, root_of
from keel_audit.records import (
    ERASURE,
    KEY_CHANGE,
    SensitivePaths,
    SourceRecord,
    erasure_record,
    event_record,
    gap_record,
    key_change_record,
    no_sensitive_paths,
)
from keel_audit.redaction import body_field, redact_record
from keel_audit.segment import (
    ParsedSegment,
    Seal,
    SealPolicy,
    SegmentFormatError,
    digest,
    encode_segment,
    parse_segment,
    seal_line,
)
from keel_audit.signing import Signer, encode_public_key, verify_signature
from keel_audit.store import DirectorySegmentStore, SegmentStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """Close a segment at ``max_records`` records or ``max_age``, whichever comes first; with nothing
    to write, still close an empty heartbeat segment every ``heartbeat`` (default: ``max_age``) so that
    silence is signed evidence too."""

    max_records: int = 1024
    max_age: timedelta = timedelta(seconds=60)
    heartbeat: timedelta | None = None

    @property
    def heartbeat_interval(self) -> timedelta:
        return self.max_age if self.heartbeat is None else self.heartbeat

    def to_seal(self) -> SealPolicy:
        return SealPolicy(
            max_records=self.max_records,
            max_age_s=self.max_age.total_seconds(),
            heartbeat_s=self.heartbeat_interval.total_seconds(),
        )


class AppendStatus(StrEnum):
    #: Added to the open segment; acknowledge once a sealed segment covers it.
    APPENDED = "appended"
    #: Already in the open segment (a redelivery); do not acknowledge yet, the seal will cover it.
    PENDING_DUPLICATE = "pending_duplicate"
    #: Already in a stored segment (a redelivery after a crash): safe to acknowledge now.
    COVERED = "covered"


@dataclass(frozen=True, slots=True)
class SealedSegment:
    index: int
    seal: Seal
    digest: str

    @property
    def first_seq(self) -> int:
        return self.seal.first_seq

    @property
    def last_seq(self) -> int:
        return self.seal.last_seq


@dataclass(frozen=True, slots=True)
class AppendResult:
    status: AppendStatus
    sealed: tuple[SealedSegment, ...] = ()
    #: Every stream sequence up to here is durably stored: acknowledge through it (None: nothing new).
    ack_through: int | None = None


@dataclass(slots=True)
class _OpenSegment:
    opened_at: datetime
    first_seq: int
    last_seq: int
    lines: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    event_count: int = 0
    gap_count: int = 0
    time_first: datetime | None = None
    time_last: datetime | None = None


class SegmentWriter:
    def __init__(
        self,
        store: SegmentStore,
        signer: Signer,
        *,
        stream: str,
        keyring: KeyringStore,
        payloads: PayloadStore | None = None,
        policy: SegmentPolicy | None = None,
        sensitive: SensitivePaths = no_sensitive_paths,
        clock: Callable[[], datetime] = utc_now,
        start_seq: int = 1,
    ) -> None:
        """Open the log in ``store`` for appending, resuming after its newest segment.

        ``start_seq`` only matters for a new, empty log: the first stream sequence it covers.
        Raises StoreCorruptError if the newest segment does not check out, KeyMismatchError if
        ``signer`` may not continue the log.
        """
        self._store = store
        self._signer = signer
        self._stream = stream
        self._keyring_store = keyring
        self._payloads = payloads
        self._policy = policy or SegmentPolicy()
        self._sensitive = sensitive
        self._clock = clock
        self._broken: str | None = None

        self._index = 0
        self._prev_digest: str | None = None
        self._cursor = start_seq - 1
        self._frontier: list[bytes] = []
        self._tree_size = 0
        if isinstance(store, DirectorySegmentStore):
            store.remove_stale_temp_files()
        indices = store.indices()
        keyring_now = keyring.load() or Keyring(stream=stream)
        if keyring_now.stream != stream:
            raise AuditError(f"keyring is for stream {keyring_now.stream}, not {stream}")
        if indices:
            keyring_now = self._resume(indices[-1], keyring_now)
        self._ensure_signer_published(keyring_now)
        self._open = self._new_segment(self._clock())

    # -- state the wiring needs -------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The last stream sequence covered by a stored segment: consume from ``cursor + 1``."""
        return self._cursor

    @property
    def next_index(self) -> int:
        return self._index

    @property
    def prev_digest(self) -> str | None:
        return self._prev_digest

    @property
    def key_id(self) -> str:
        return self._signer.key_id

    @property
    def tree_size(self) -> int:
        return self._tree_size

    # -- resume -----------------------------------------------------------------------------------

    def _resume(self, last: int, keyring: Keyring) -> Keyring:
        try:
            parsed = parse_segment(self._store.read(last))
        except (KeyError, SegmentFormatError) as exc:
            raise StoreCorruptError(f"newest segment {last} is unreadable: {exc}") from exc
        seal = parsed.seal
        self._check_newest(last, parsed, keyring)
        frontier = [bytes.fromhex(h) for h in seal.prev_frontier]
        for size, h in enumerate(seal.leaf_hashes, start=seal.leaf_first):
            frontier_append(frontier, size, bytes.fromhex(h))
        if frontier_root(frontier).hex() != seal.tree_root:
            raise StoreCorruptError(f"segment {last}: tree root does not follow from its frontier and leaves")

        self._index = last + 1
        self._prev_digest = parsed.digest
        self._cursor = seal.last_seq
        self._frontier = frontier
        self._tree_size = seal.tree_size

        records = [msgspec.json.decode(line) for line in parsed.records]
        expected_key = seal.key_id
        for record in records:
            if record.get("t") == KEY_CHANGE:
                expected_key = record["new_key_id"]
                old = keyring.get(seal.key_id)
                if old is not None and old.last_segment is None:
                    # Crashed between storing the rotation segment and publishing the keyring.
                    keyring = keyring.retire(seal.key_id, last, parse_time(seal.closed_at))
                    self._keyring_store.save(keyring)
            elif record.get("t") == ERASURE and self._payloads is not None:
                # Crashed between storing the erasure record and deleting the payload: finish it.
                self._payloads.delete(record["target"])
        if self._signer.key_id != expected_key:
            raise KeyMismatchError(
                f"segment {last} is signed by {seal.key_id} and announces no change to "
                f"{self._signer.key_id}; rotate with SegmentWriter.rotate while holding key {expected_key}"
            )
        return keyring

    def _check_newest(self, last: int, parsed: ParsedSegment, keyring: Keyring) -> None:
        seal = parsed.seal
        if seal.segment_index != last or seal.stream != self._stream:
            raise StoreCorruptError(f"segment {last} claims to be {seal.stream} segment {seal.segment_index}")
        if not parsed.well_terminated:
            raise StoreCorruptError(f"segment {last} has data after its seal")
        entry = keyring.get(seal.key_id)
        public_key = entry.public_key if entry else None
        if public_key is None and seal.key_id == self._signer.key_id:
            public_key = self._signer.public_key
        if public_key is None or not verify_signature(public_key, parsed.signature, parsed.signed_message):
            raise StoreCorruptError(f"segment {last}: seal signature does not verify with a known key")
        hashes = [leaf_hash(line) for line in parsed.records]
        if [h.hex() for h in hashes] != seal.leaf_hashes or root_of(hashes).hex() != seal.segment_root:
            raise StoreCorruptError(f"segment {last}: records do not match the seal")

    def _ensure_signer_published(self, keyring: Keyring) -> None:
        entry = keyring.get(self._signer.key_id)
        if entry is None:
            keyring = keyring.with_key(
                KeyEntry(
                    key_id=self._signer.key_id,
                    public_key=self._signer.public_key,
                    valid_from=self._clock(),
                    first_segment=self._index,
                )
            )
            self._keyring_store.save(keyring)
        elif entry.last_segment is not None and entry.last_segment < self._index:
            raise KeyMismatchError(f"key {entry.key_id} was retired after segment {entry.last_segment}")
        elif entry.first_segment > self._index:
            raise KeyMismatchError(f"key {entry.key_id} is not valid before segment {entry.first_segment}")

    # -- appending --------------------------------------------------------------------------------

    def _new_segment(self, now: datetime) -> _OpenSegment:
        return _OpenSegment(opened_at=now, first_seq=self._cursor + 1, last_seq=self._cursor)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise AuditError(f"writer must be reopened: {self._broken}")

    def _add(self, record: dict[str, Any], plain_numbers: bool = False) -> None:
        line = canonical_bytes(record, plain_numbers=plain_numbers)
        self._open.lines.append(line)
        self._open.hashes.append(leaf_hash(line))

    def append(self, source: SourceRecord) -> AppendResult:
        self._check_usable()
        if source.stream != self._stream:
            raise AuditError(f"record from stream {source.stream} given to the {self._stream} writer")
        if source.seq <= self._cursor:
            return AppendResult(AppendStatus.COVERED, ack_through=self._cursor)
        segment = self._open
        if source.seq <= segment.last_seq:
            return AppendResult(AppendStatus.PENDING_DUPLICATE)
        if source.seq > segment.last_seq + 1:
            self._add(gap_record(self._stream, segment.last_seq + 1, source.seq - 1), plain_numbers=True)
            segment.gap_count += 1
        record, plain_numbers = event_record(source)
        pointers = self._sensitive(source.subject, record[body_field(record)])
        record, payload = redact_record(record, pointers)
        if payload is not None:
            if self._payloads is None:
                raise AuditError("sensitive fields are configured but the writer has no payload store")
            # The clear payload is stored before the segment that commits to it (write order).
            self._payloads.put(payload)
        self._add(record, plain_numbers)
        segment.event_count += 1
        segment.last_seq = source.seq
        moment = source.time.astimezone(UTC)
        if segment.time_first is None or moment < segment.time_first:
            segment.time_first = moment
        if segment.time_last is None or moment > segment.time_last:
            segment.time_last = moment

        sealed: list[SealedSegment] = []
        if len(segment.lines) >= self._policy.max_records:
            sealed.append(self._seal("count"))
        elif self._clock() - segment.opened_at >= self._policy.max_age:
            sealed.append(self._seal("age"))
        return AppendResult(AppendStatus.APPENDED, tuple(sealed), ack_through=sealed[-1].last_seq if sealed else None)

    def tick(self) -> SealedSegment | None:
        """Seal by age (with records) or heartbeat (without); call it regularly when idle."""
        self._check_usable()
        age = self._clock() - self._open.opened_at
        if self._open.lines and age >= self._policy.max_age:
            return self._seal("age")
        if not self._open.lines and age >= self._policy.heartbeat_interval:
            return self._seal("heartbeat")
        return None

    def flush(self, reason: str = "shutdown") -> SealedSegment | None:
        """Seal the open segment now if it holds anything (graceful shutdown)."""
        self._check_usable()
        return self._seal(reason) if self._open.lines else None

    def rotate(self, new_signer: Signer) -> SealedSegment:
        """Switch to ``new_signer``: a key_change record, signed by the current key, announces it."""
        self._check_usable()
        if new_signer.key_id == self._signer.key_id:
            raise KeyMismatchError("the new key is the current key")
        old_key = self._signer.key_id
        self._add(
            key_change_record(
                old_key,
                new_signer.key_id,
                encode_public_key(new_signer.public_key),
                self._index + 1,
                self._clock(),
            )
        )
        sealed = self._seal("rotation")
        closed_at = parse_time(sealed.seal.closed_at)
        keyring = (self._keyring_store.load() or Keyring(stream=self._stream)).retire(old_key, sealed.index, closed_at)
        if keyring.get(new_signer.key_id) is None:
            keyring = keyring.with_key(
                KeyEntry(new_signer.key_id, new_signer.public_key, valid_from=closed_at, first_segment=self._index)
            )
        self._keyring_store.save(keyring)
        self._signer = new_signer
        return sealed

    def erase(self, record_id: str, *, reason: str, requested_by: str) -> SealedSegment:
        """Delete the clear payload of ``record_id``, logging the erasure first.

        The erasure record is sealed before the payload is deleted: a crash in between leaves a logged
        erasure with the payload still present, which the next start completes, rather than a payload
        missing without explanation.
        """
        self._check_usable()
        if self._payloads is None:
            raise AuditError("the writer has no payload store")
        payload = self._payloads.get(record_id)
        if payload is None:
            raise RecordNotFoundError(f"no clear payload for {record_id} (never redacted, or already erased)")
        self._add(erasure_record(record_id, sorted(payload.values), reason, requested_by, self._clock()))
        sealed = self._seal("erasure")
        self._payloads.delete(record_id)
        return sealed

    # -- sealing ----------------------------------------------------------------------------------

    def _seal(self, reason: str) -> SealedSegment:
        segment = self._open
        now = self._clock()
        frontier = list(self._frontier)
        for size, h in enumerate(segment.hashes, start=self._tree_size):
            frontier_append(frontier, size, h)
        seal = Seal(
            t="seal",
            v=1,
            stream=self._stream,
            segment_index=self._index,
            first_seq=segment.first_seq,
            last_seq=segment.last_seq,
            count=len(segment.lines),
            event_count=segment.event_count,
            gap_count=segment.gap_count,
            time_first=None if segment.time_first is None else format_time(segment.time_first),
            time_last=None if segment.time_last is None else format_time(segment.time_last),
            opened_at=format_time(segment.opened_at),
            closed_at=format_time(now),
            close_reason=reason,
            policy=self._policy.to_seal(),
            leaf_first=self._tree_size,
            tree_size=self._tree_size + len(segment.hashes),
            leaf_hashes=[h.hex() for h in segment.hashes],
            segment_root=root_of(segment.hashes).hex(),
            prev_frontier=[h.hex() for h in self._frontier],
            tree_root=frontier_root(frontier).hex(),
            prev_digest=self._prev_digest,
            key_id=self._signer.key_id,
        )
        line = seal_line(seal, self._signer)
        try:
            self._store.write(self._index, encode_segment(segment.lines, line))
        except SegmentExistsError as exc:
            # Another writer stored this index: our view of the log is stale and must not continue.
            self._broken = str(exc)
            raise
        sealed = SealedSegment(index=self._index, seal=seal, digest=digest(line))
        self._index += 1
        self._prev_digest = sealed.digest
        self._cursor = segment.last_seq
        self._frontier = frontier
        self._tree_size = seal.tree_size
        self._open = self._new_segment(now)
        return sealed
