"""Canonical encodings: RFC 8785 JSON for everything hashed or signed, fixed-width UTC timestamps."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import rfc8785

from keel_audit.errors import AuditError

#: JSON values as they come out of ``json.loads``; kept loose on purpose, the log stores any JSON body.
JSON = Any


def canonical_bytes(value: JSON) -> bytes:
    """RFC 8785 (JCS) bytes of ``value``: the exact bytes that are hashed and signed."""
    return rfc8785.dumps(value)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits, so equal instants have equal strings."""
    if moment.tzinfo is None:
        raise AuditError(f"naive datetime {moment!r}: the audit log only accepts timezone-aware UTC times")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time` (also accepts any ISO 8601 string with an offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return moment.astimezone(UTC)


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    result: dict[str, JSON] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> JSON:
    raise ValueError(f"non-JSON constant {name}")


def parse_json_body(data: bytes) -> tuple[bool, JSON]:
    """Decide how a message body is stored: ``(True, value)`` for JSON that canonicalises losslessly,
    ``(False, base64 text)`` otherwise.

    Bodies with duplicate keys, NaN/Infinity, integers beyond 2**53 or nesting deeper than Python's
    parser goes are not canonicalisable without losing information, so they are kept byte-exact as base64
    instead of being silently normalised.
    """
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        canonical_bytes(value)
    except (UnicodeDecodeError, ValueError, RecursionError, rfc8785.CanonicalizationError):
        # RecursionError: nested deeper than Python parses; kept byte-exact like any other non-JSON body.
        return False, base64.b64encode(data).decode("ascii")
    return True, value
