"""Field-level redaction: sensitive values become salted commitments, the clear values go elsewhere.

Choice: one random 32-byte salt per record, stored with the clear values in the erasable store, rather
than an HMAC under a long-lived secret. With a per-record salt, erasing the clear payload also erases
the only means of testing a guess against the commitment, so an erased e-mail address or "approve"
cannot later be confirmed by brute force, and equal values in different records give unrelated
commitments (no linking of erased PII across records). An HMAC secret would survive every erasure and
keep both doors open for whoever holds it. The commitment is domain separated and binds the pointer:

    commit = SHA-256("keel-audit/redact/v1" || 0x00 || salt || pointer || 0x00 || JCS(value))
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from keel_audit.canonical import JSON, canonical_bytes

PLACEHOLDER_KEY: Final = "$redacted"
SALT_BYTES: Final = 32
_DOMAIN: Final = b"keel-audit/redact/v1\x00"


class PointerError(ValueError):
    """A JSON pointer is malformed or does not resolve in the document."""


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901 reference tokens of ``pointer`` ("" is the whole document)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError(f"JSON pointer must be empty or start with '/': {pointer!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _step(container: JSON, part: str, pointer: str) -> tuple[JSON, str | int]:
    if isinstance(container, dict):
        if part not in container:
            raise PointerError(f"{pointer!r}: no member {part!r}")
        return container[part], part
    if isinstance(container, list):
        # RFC 6901: array indices are decimal without leading zeros; "-" (past the end) never resolves.
        if not part.isdigit() or (len(part) > 1 and part.startswith("0")) or int(part) >= len(container):
            raise PointerError(f"{pointer!r}: no array element {part!r}")
        return container[int(part)], int(part)
    raise PointerError(f"{pointer!r}: cannot descend into a scalar")


def resolve(document: JSON, pointer: str) -> JSON:
    value = document
    for part in parse_pointer(pointer):
        value, _ = _step(value, part, pointer)
    return value


def replace(document: JSON, pointer: str, new_value: JSON) -> JSON:
    """``document`` with the value at ``pointer`` replaced; containers on the path are copied, so the
    caller's document (the source record) is never mutated."""
    return _replace(document, parse_pointer(pointer), new_value, pointer)


def _replace(document: JSON, tokens: list[str], new_value: JSON, pointer: str) -> JSON:
    if not tokens:
        return new_value
    value, key = _step(document, tokens[0], pointer)
    copy: Any = dict(document) if isinstance(document, dict) else list(document)
    copy[key] = _replace(value, tokens[1:], new_value, pointer)
    return copy


def commitment(salt: bytes, pointer: str, value: JSON) -> str:
    return hashlib.sha256(_DOMAIN + salt + pointer.encode("utf-8") + b"\x00" + canonical_bytes(value)).hexdigest()


def placeholder(digest: str) -> dict[str, str]:
    return {PLACEHOLDER_KEY: f"sha256:{digest}"}


def placeholder_digest(value: JSON) -> str | None:
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(PLACEHOLDER_KEY), str):
        text: str = value[PLACEHOLDER_KEY]
        return text.removeprefix("sha256:")
    return None


def _outermost(pointers: Iterable[str]) -> list[str]:
    """Drop pointers inside another listed pointer: committing the ancestor already covers them."""
    ordered = sorted(set(pointers), key=lambda p: (len(parse_pointer(p)), p))
    kept: list[str] = []
    for pointer in ordered:
        tokens = parse_pointer(pointer)
        if not any(tokens[: len(parse_pointer(k))] == parse_pointer(k) for k in kept):
            kept.append(pointer)
    return sorted(kept)


@dataclass(frozen=True, slots=True)
class ClearPayload:
    """What the erasable store keeps for one record: the salt and the clear values by pointer."""

    record_id: str
    salt: bytes
    values: dict[str, JSON]

    def to_bytes(self) -> bytes:
        return canonical_bytes(
            {
                "v": 1,
                "record_id": self.record_id,
                "salt": base64.b64encode(self.salt).decode(),
                "values": self.values,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClearPayload:
        obj = json.loads(raw)
        return cls(record_id=obj["record_id"], salt=base64.b64decode(obj["salt"]), values=obj["values"])


def body_field(record: dict[str, Any]) -> str:
    return "data" if "data" in record else "data_b64"


def redact_record(
    record: dict[str, Any], pointers: Collection[str], salt: bytes | None = None
) -> tuple[dict[str, Any], ClearPayload | None]:
    """Replace the sensitive values of an event record by commitments.

    Pointers that do not resolve in this body are skipped (event bodies vary by type). A body kept as
    base64 cannot be addressed by pointer, so any sensitive pointer commits the whole body: fail closed.
    """
    if not pointers:
        return record, None
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    field_name = body_field(record)
    body = record[field_name]
    wanted = [""] if field_name == "data_b64" else _outermost(pointers)
    values: dict[str, JSON] = {}
    for pointer in wanted:
        try:
            value = resolve(body, pointer)
        except PointerError:
            continue
        values[pointer] = value
        body = replace(body, pointer, placeholder(commitment(salt, pointer, value)))
    if not values:
        return record, None
    redacted = dict(record)
    redacted[field_name] = body
    redacted["redacted"] = sorted(values)
    return redacted, ClearPayload(record_id=record["id"], salt=salt, values=values)


def check_payload(record: dict[str, Any], payload: ClearPayload) -> list[str]:
    """Pointers whose clear value does not match the record's commitment (empty when all match)."""
    body = record[body_field(record)]
    bad: list[str] = []
    for pointer in record.get("redacted", []):
        try:
            digest = placeholder_digest(resolve(body, pointer))
        except PointerError:
            digest = None
        if (
            digest is None
            or pointer not in payload.values
            or commitment(payload.salt, pointer, payload.values[pointer]) != digest
        ):
            bad.append(pointer)
    return bad


def restore(record: dict[str, Any], payload: ClearPayload) -> dict[str, Any]:
    """The record with its clear values put back (call :func:`check_payload` first)."""
    field_name = body_field(record)
    body = record[field_name]
    for pointer in record.get("redacted", []):
        body = replace(body, pointer, payload.values[pointer])
    restored = dict(record)
    restored[field_name] = body
    return restored
