"""Mutations an attacker with write access to the segment files can make (no signing key unless given)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from keel_audit.merkle import frontier_append, frontier_root, leaf_hash, root_of
from keel_audit.segment import Seal, encode_segment, parse_segment, seal_line
from keel_audit.signing import Signer


def rewrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # published segments are read-only; the attacker owns the files anyway
    path.write_bytes(data)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, new_lines: list[bytes]) -> None:
    rewrite(path, b"".join(line + b"\n" for line in new_lines))


def resign(path: Path, signer: Signer, records: list[bytes] | None = None, **changes: object) -> None:
    """Rebuild a segment's seal over ``records`` (default: its own) and sign it with ``signer``."""
    parsed = parse_segment(path.read_bytes())
    records = parsed.records if records is None else records
    hashes = [leaf_hash(r) for r in records]
    frontier = [bytes.fromhex(h) for h in parsed.seal.prev_frontier]
    for size, h in enumerate(hashes, start=parsed.seal.leaf_first):
        frontier_append(frontier, size, h)
    seal: Seal = msgspec.structs.replace(
        parsed.seal,
        leaf_hashes=[h.hex() for h in hashes],
        count=len(records),
        tree_size=parsed.seal.leaf_first + len(records),
        segment_root=root_of(hashes).hex(),
        tree_root=frontier_root(frontier).hex(),
        key_id=signer.key_id,
    )
    seal = msgspec.structs.replace(seal, **changes)
    rewrite(path, encode_segment(records, seal_line(seal, signer)))
