"""Keel's audit service core: signed, append-only segments over the KEEL_EVENTS stream.

The NATS wiring calls :class:`SegmentWriter` (append / tick / flush / rotate / erase); auditors call
:func:`verify_log`, the proof functions and :func:`run_records`, or the ``keel audit`` CLI in
:mod:`keel_audit.cli`. Formats and the reasons behind them: docs/decisions/020-audit-signed-segments.md.
"""

from keel_audit.checkpoint import Checkpoint
from keel_audit.erasure import DirectoryPayloadStore, PayloadStore
from keel_audit.errors import (
    AuditError,
    KeyMismatchError,
    RecordNotFoundError,
    SegmentExistsError,
    StoreCorruptError,
)
from keel_audit.keyring import KeyEntry, Keyring, KeyringFile, KeyringStore
from keel_audit.proofs import (
    ConsistencyProof,
    InclusionProof,
    prove_consistency,
    prove_inclusion,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from keel_audit.reconstruct import RunRecord, run_records
from keel_audit.records import SensitivePaths, SourceRecord, fixed_sensitive_paths, run_id_of
from keel_audit.signing import Signer, load_signer
from keel_audit.store import AuditDirectory, DirectorySegmentStore, SegmentStore
from keel_audit.verify import Kind, Problem, Severity, Verdict, VerifyReport, verify_log
from keel_audit.writer import AppendResult, AppendStatus, SealedSegment, SegmentPolicy, SegmentWriter

__all__ = [
    "AppendResult",
    "AppendStatus",
    "AuditDirectory",
    "AuditError",
    "Checkpoint",
    "ConsistencyProof",
    "DirectoryPayloadStore",
    "DirectorySegmentStore",
    "InclusionProof",
    "KeyEntry",
    "KeyMismatchError",
    "Keyring",
    "KeyringFile",
    "KeyringStore",
    "Kind",
    "PayloadStore",
    "Problem",
    "RecordNotFoundError",
    "RunRecord",
    "SealedSegment",
    "SegmentExistsError",
    "SegmentPolicy",
    "SegmentStore",
    "SegmentWriter",
    "SensitivePaths",
    "Severity",
    "Signer",
    "SourceRecord",
    "StoreCorruptError",
    "Verdict",
    "VerifyReport",
    "fixed_sensitive_paths",
    "load_signer",
    "prove_consistency",
    "prove_inclusion",
    "run_id_of",
    "run_records",
    "verify_consistency_proof",
    "verify_inclusion_proof",
    "verify_log",
]
