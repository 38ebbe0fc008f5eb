"""The segment file format: canonical record lines followed by one signed seal line.

A segment file is UTF-8 text, one RFC 8785 JSON object per line, each line ending in ``\\n``::

    <record 0>
    ...
    <record n-1>
    {"seal":<seal body>,"sig":"<base64 Ed25519 signature>"}

The leaf data of record *i* is its line without the newline; JCS escapes every control character, so a
record can never contain a newline. The signature covers ``b"keel-audit/seal/v1\\0" + <seal body bytes>``
exactly as stored, so the verifier checks it without re-canonicalising anything. The segment digest
(what the next seal calls ``prev_digest`` and a checkpoint calls ``segment_digest``) is SHA-256 of the
whole seal line; through ``leaf_hashes`` and the roots it commits to every record of the segment.

Seal body fields: see :class:`Seal`. ``leaf_hashes`` lists each record's RFC 9162 leaf hash, so a
verifier can name exactly which record was modified, removed, duplicated or moved, and can still vouch
for the untouched records of a damaged segment.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Final

import msgspec

from keel_audit.canonical import canonical_bytes, parse_time
from keel_audit.signing import Signer

SEAL_DOMAIN: Final = b"keel-audit/seal/v1\x00"
_PREFIX: Final = b'{"seal":'
_SIG_INFIX: Final = b',"sig":"'
_SUFFIX: Final = b'"}'


class SealPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_records: int
    max_age_s: float
    heartbeat_s: float


class Seal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    t: str
    v: int
    stream: str
    segment_index: int
    #: Inclusive stream-sequence range covered by this segment's event and gap records. An empty
    #: segment has ``first_seq == last_seq + 1``, so ``first_seq == previous last_seq + 1`` always holds.
    first_seq: int
    last_seq: int
    count: int
    event_count: int
    gap_count: int
    time_first: str | None
    time_last: str | None
    opened_at: str
    closed_at: str
    close_reason: str
    policy: SealPolicy
    #: Global leaf index of this segment's first record; equals the tree size before this segment.
    leaf_first: int
    tree_size: int
    leaf_hashes: list[str]
    segment_root: str
    #: Compact frontier of the global tree before this segment: lets a writer resume and a verifier
    #: re-synchronise after a missing segment without the earlier files.
    prev_frontier: list[str]
    tree_root: str
    prev_digest: str | None
    key_id: str


_seal_decoder = msgspec.json.Decoder(Seal)


class SegmentFormatError(ValueError):
    """The bytes are not a segment: no final newline, no seal line, or a malformed seal."""


def seal_body_bytes(seal: Seal) -> bytes:
    return canonical_bytes(msgspec.to_builtins(seal))


def seal_line(seal: Seal, signer: Signer) -> bytes:
    body = seal_body_bytes(seal)
    signature = base64.b64encode(signer.sign(SEAL_DOMAIN + body))
    return _PREFIX + body + _SIG_INFIX + signature + _SUFFIX


def encode_segment(record_lines: list[bytes], sealed_line: bytes) -> bytes:
    return b"".join(line + b"\n" for line in [*record_lines, sealed_line])


def digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class ParsedSegment:
    records: list[bytes]
    seal_line: bytes
    seal: Seal
    body: bytes
    signature: bytes
    #: True when the file ends with exactly the seal line and its newline; anything else after the
    #: seal (junk, blank lines, a missing newline) is tampering.
    well_terminated: bool

    @property
    def digest(self) -> str:
        return digest(self.seal_line)

    @property
    def signed_message(self) -> bytes:
        return SEAL_DOMAIN + self.body


def split_seal_line(line: bytes) -> tuple[bytes, bytes]:
    """``(seal body bytes, signature)`` of a seal line, or SegmentFormatError."""
    if not (line.startswith(_PREFIX) and line.endswith(_SUFFIX)):
        raise SegmentFormatError("the last line is not a seal")
    cut = line.rfind(_SIG_INFIX)
    if cut < len(_PREFIX):
        raise SegmentFormatError("seal line has no signature")
    try:
        signature = base64.b64decode(line[cut + len(_SIG_INFIX) : -len(_SUFFIX)], validate=True)
    except ValueError as exc:
        raise SegmentFormatError(f"seal signature is not base64: {exc}") from exc
    return line[len(_PREFIX) : cut], signature


def parse_seal(line: bytes) -> tuple[Seal, bytes, bytes]:
    body, signature = split_seal_line(line)
    try:
        seal = _seal_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SegmentFormatError(f"seal is malformed: {exc}") from exc
    if seal.t != "seal" or seal.v != 1:
        raise SegmentFormatError(f"unknown seal type/version {seal.t!r}/{seal.v}")
    _check_fields(seal)
    return seal, body, signature


_HEX32: Final = re.compile(r"[0-9a-f]{64}")


def _check_fields(seal: Seal) -> None:
    """Reject a seal whose fields could not have been written by the writer, so that later checks can
    rely on well-formed hashes, times and counts (a signature check alone would come too late)."""
    hashes = [*seal.leaf_hashes, *seal.prev_frontier, seal.segment_root, seal.tree_root]
    if seal.prev_digest is not None:
        hashes.append(seal.prev_digest)
    if not all(_HEX32.fullmatch(h) for h in hashes):
        raise SegmentFormatError("seal holds a malformed hash")
    if min(seal.segment_index, seal.first_seq, seal.last_seq + 1, seal.count, seal.leaf_first, seal.tree_size) < 0:
        raise SegmentFormatError("seal holds a negative index, sequence or count")
    if (
        seal.count != len(seal.leaf_hashes)
        or seal.tree_size != seal.leaf_first + seal.count
        or len(seal.prev_frontier) != seal.leaf_first.bit_count()
    ):
        raise SegmentFormatError("seal sizes do not add up (count, leaf_first, tree_size, prev_frontier)")
    try:
        for moment in (seal.opened_at, seal.closed_at, seal.time_first, seal.time_last):
            if moment is not None:
                parse_time(moment)
    except ValueError as exc:
        raise SegmentFormatError(f"seal holds a malformed time: {exc}") from exc


def parse_segment(raw: bytes) -> ParsedSegment:
    """Split a segment file into record lines and its seal. Record lines are not parsed here."""
    lines = raw.split(b"\n")
    # The seal is the last line that looks like one; whatever follows it is reported, not ignored
    # (the aws-cli "data after the end of the stream" lesson).
    for position in range(len(lines) - 1, -1, -1):
        if lines[position].startswith(_PREFIX):
            break
    else:
        raise SegmentFormatError("no seal line (file truncated or not a segment)")
    seal, body, signature = parse_seal(lines[position])
    well_terminated = position == len(lines) - 2 and lines[-1] == b""
    return ParsedSegment(
        records=lines[:position],
        seal_line=lines[position],
        seal=seal,
        body=body,
        signature=signature,
        well_terminated=well_terminated,
    )
