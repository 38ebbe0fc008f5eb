"""Test helpers for the audit core: a deterministic clock, keys, and a small signed log on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keel_audit.checkpoint import Checkpoint
from keel_audit.erasure import DirectoryPayloadStore
from keel_audit.keyring import Keyring, KeyringFile
from keel_audit.records import SensitivePaths, SourceRecord, no_sensitive_paths
from keel_audit.signing import Signer
from keel_audit.store import AuditDirectory, DirectorySegmentStore
from keel_audit.verify import VerifyReport, verify_log
from keel_audit.writer import SegmentPolicy, SegmentWriter

STREAM = "KEEL_EVENTS"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def signer_from(byte: int) -> Signer:
    return Signer.from_seed(bytes([byte]) * 32)


def source(seq: int, run: str = "r-1", event_type: str = "step.completed", body: object = None) -> SourceRecord:
    payload = {"run_id": run, "n": seq, "note": f"event {seq}"} if body is None else body
    return SourceRecord(
        stream=STREAM,
        seq=seq,
        subject=f"keel.run.refund.{run}.executor.{event_type}",
        time=T0 + timedelta(milliseconds=seq),
        headers={"Nats-Msg-Id": f"msg-{seq}", "traceparent": "00-abc-def-01"},
        data=json.dumps(payload).encode(),
    )


@dataclass
class AuditLog:
    """An audit directory plus the writer that fills it."""

    root: Path
    clock: FakeClock
    signer: Signer
    policy: SegmentPolicy = field(default_factory=lambda: SegmentPolicy(max_records=4))
    sensitive: SensitivePaths = no_sensitive_paths
    writer: SegmentWriter | None = None

    @property
    def layout(self) -> AuditDirectory:
        return AuditDirectory(self.root)

    @property
    def store(self) -> DirectorySegmentStore:
        return DirectorySegmentStore(self.layout.segments)

    @property
    def payloads(self) -> DirectoryPayloadStore:
        return DirectoryPayloadStore(self.layout.payloads)

    @property
    def keyring(self) -> Keyring:
        keyring = KeyringFile(self.layout.keyring).load()
        assert keyring is not None
        return keyring

    def open(self, signer: Signer | None = None) -> SegmentWriter:
        self.writer = SegmentWriter(
            self.store,
            signer or self.signer,
            stream=STREAM,
            keyring=KeyringFile(self.layout.keyring),
            payloads=self.payloads,
            policy=self.policy,
            sensitive=self.sensitive,
            clock=self.clock,
        )
        return self.writer

    def append(self, *seqs: int, run: str = "r-1") -> None:
        writer = self.writer or self.open()
        for seq in seqs:
            self.clock.advance(1)
            writer.append(source(seq, run=run))

    def segment_path(self, index: int) -> Path:
        return self.layout.segments / f"{index:012d}.jsonl"

    def verify(
        self,
        checkpoint: Checkpoint | None = None,
        max_age: timedelta | None = None,
        now: datetime | None = None,
    ) -> VerifyReport:
        return verify_log(
            self.store, self.keyring, checkpoint=checkpoint, payloads=self.payloads, max_age=max_age, now=now
        )

    def checkpoint(self) -> Checkpoint:
        report = verify_log(self.store, self.keyring)
        head = report.head
        assert head is not None
        return Checkpoint(STREAM, head.segment_index, head.last_seq, head.tree_size, head.tree_root, head.digest)


def make_log(root: Path, sensitive: SensitivePaths = no_sensitive_paths) -> AuditLog:
    return AuditLog(root=root, clock=FakeClock(), signer=signer_from(1), sensitive=sensitive)
