"""Inclusion proofs (one record is in the log) and consistency proofs (a later checkpoint extends an
earlier one), RFC 9162 over the log's global tree of records.

An inclusion proof is self-contained: the record line, its leaf index, the audit path, and the signed
seal whose ``tree_size``/``tree_root`` it proves against, so it verifies offline with only the keyring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from keel_audit.canonical import parse_time
from keel_audit.checkpoint import Checkpoint
from keel_audit.errors import AuditError, RecordNotFoundError
from keel_audit.keyring import Keyring
from keel_audit.merkle import (
    consistency_path,
    inclusion_path,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from keel_audit.segment import SEAL_DOMAIN, ParsedSegment, SegmentFormatError, parse_seal, parse_segment
from keel_audit.signing import verify_signature
from keel_audit.store import SegmentStore


@dataclass(frozen=True, slots=True)
class InclusionProof:
    record: str
    leaf_index: int
    tree_size: int
    path: list[str]
    segment_index: int
    seal: str

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "t": "inclusion_proof",
            "record": self.record,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "path": self.path,
            "segment_index": self.segment_index,
            "seal": self.seal,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> InclusionProof:
        return cls(
            record=str(obj["record"]),
            leaf_index=int(obj["leaf_index"]),
            tree_size=int(obj["tree_size"]),
            path=[str(h) for h in obj["path"]],
            segment_index=int(obj["segment_index"]),
            seal=str(obj["seal"]),
        )


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    path: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "t": "consistency_proof",
            "old_size": self.old_size,
            "new_size": self.new_size,
            "path": self.path,
        }


@dataclass(frozen=True, slots=True)
class _Located:
    segment_index: int
    leaf_index: int
    line: bytes


def _contiguous(store: SegmentStore) -> list[int]:
    indices = store.indices()
    if indices != list(range(len(indices))):
        raise AuditError("segments are missing; run verify: proofs need every segment from 0")
    return indices


def _parse(store: SegmentStore, index: int) -> ParsedSegment:
    try:
        return parse_segment(store.read(index))
    except (KeyError, SegmentFormatError) as exc:
        raise AuditError(f"segment {index} is unreadable: {exc}") from exc


def locate(store: SegmentStore, target: str) -> _Located:
    """Find a record by id, or an event by its stream sequence when ``target`` is all digits."""
    seq = int(target) if target.isdigit() else None
    for index in _contiguous(store):
        parsed = _parse(store, index)
        for position, line in enumerate(parsed.records):
            try:
                record = msgspec.json.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict):
                continue
            if (seq is not None and record.get("t") == "event" and record.get("seq") == seq) or record.get(
                "id"
            ) == target:
                return _Located(index, parsed.seal.leaf_first + position, line)
    raise RecordNotFoundError(f"no record {target!r} in the log")


def _leaves_through(store: SegmentStore, last_segment: int) -> tuple[list[bytes], ParsedSegment]:
    leaves: list[bytes] = []
    parsed: ParsedSegment | None = None
    for index in _contiguous(store):
        if index > last_segment:
            break
        parsed = _parse(store, index)
        leaves.extend(bytes.fromhex(h) for h in parsed.seal.leaf_hashes)
    if parsed is None or parsed.seal.segment_index != last_segment:
        raise AuditError(f"segment {last_segment} is not in the log")
    return leaves, parsed


def prove_inclusion(store: SegmentStore, target: str, *, at_segment: int | None = None) -> InclusionProof:
    """Proof that record ``target`` is in the tree sealed by ``at_segment`` (default: the newest)."""
    located = locate(store, target)
    indices = _contiguous(store)
    last = indices[-1] if at_segment is None else at_segment
    if last < located.segment_index:
        raise AuditError(f"record {target} is in segment {located.segment_index}, after segment {last}")
    leaves, head = _leaves_through(store, last)
    path = inclusion_path(leaves, located.leaf_index, len(leaves))
    return InclusionProof(
        record=located.line.decode("utf-8"),
        leaf_index=located.leaf_index,
        tree_size=len(leaves),
        path=[h.hex() for h in path],
        segment_index=last,
        seal=head.seal_line.decode("utf-8"),
    )


def verify_inclusion_proof(proof: InclusionProof, keyring: Keyring) -> list[str]:
    """Problems with ``proof`` (an empty list means it proves the record is in the signed tree)."""
    try:
        seal, body, signature = parse_seal(proof.seal.encode("utf-8"))
    except SegmentFormatError as exc:
        return [f"seal: {exc}"]
    entry = keyring.get(seal.key_id)
    if entry is None:
        return [f"seal is signed by unknown key {seal.key_id}"]
    problems = []
    if not verify_signature(entry.public_key, signature, SEAL_DOMAIN + body):
        problems.append("seal signature does not verify")
    window = entry.window_problem(seal.segment_index, parse_time(seal.closed_at))
    if window:
        problems.append(window)
    if seal.tree_size != proof.tree_size:
        problems.append(f"proof is for tree size {proof.tree_size}, the seal signs {seal.tree_size}")
    try:
        path = [bytes.fromhex(h) for h in proof.path]
        root = bytes.fromhex(seal.tree_root)
    except ValueError:
        return [*problems, "proof holds a hash that is not hex"]
    if not verify_inclusion(leaf_hash(proof.record.encode("utf-8")), proof.leaf_index, proof.tree_size, path, root):
        problems.append("audit path does not lead from the record to the signed root")
    return problems


def prove_consistency(store: SegmentStore, old: Checkpoint, new: Checkpoint) -> ConsistencyProof:
    leaves, _ = _leaves_through(store, new.segment_index)
    if len(leaves) != new.tree_size:
        raise AuditError(
            f"the log holds {len(leaves)} records through segment {new.segment_index}, not {new.tree_size}"
        )
    return ConsistencyProof(old.tree_size, new.tree_size, [h.hex() for h in consistency_path(leaves, old.tree_size)])


def verify_consistency_proof(proof: ConsistencyProof, old: Checkpoint, new: Checkpoint) -> bool:
    """True when the tree of ``new`` extends the tree of ``old`` (sizes taken from the checkpoints)."""
    if (proof.old_size, proof.new_size) != (old.tree_size, new.tree_size):
        return False
    try:
        path = [bytes.fromhex(h) for h in proof.path]
        old_root, new_root = bytes.fromhex(old.tree_root), bytes.fromhex(new.tree_root)
    except ValueError:
        return False
    return verify_consistency(old.tree_size, new.tree_size, old_root, new_root, path)
