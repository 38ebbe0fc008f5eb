"""Canonical encodings: RFC 8785 JSON for everything hashed or signed, fixed-width UTC timestamps."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any, NamedTuple

import rfc8785

from keel_audit.errors import AuditError

#: JSON values as they come out of ``json.loads``; kept loose on purpose, the log stores any JSON body.
JSON = Any


#: Largest integer JCS writes exactly (it treats every number as an IEEE double).
MAX_EXACT_INT = 2**53 - 1
_COMPACT_SORTED = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
_OUTSIDE_BMP = re.compile(rb"[\xf0-\xf4]")  # lead byte of a 4-byte UTF-8 sequence


#: Non-integral floats whose shortest round-trip text Python and JCS (ECMAScript) both write in plain
#: decimal notation; outside it one of them switches to an exponent.
PLAIN_FLOATS = (1e-4, 1e16)


def canonical_bytes(value: JSON, *, plain_numbers: bool = False) -> bytes:
    """RFC 8785 (JCS) bytes of ``value``: the exact bytes that are hashed and signed.

    ``plain_numbers`` is the caller's word that every number in ``value`` is an integer within
    ±(2**53 - 1) or a non-integral float within ``PLAIN_FLOATS`` (it parsed the value and looked). For
    such a value the standard library's compact encoding with sorted keys *is* JCS, byte for byte: the
    same escapes, the same integer text, and for those floats the same shortest round-trip digits in the
    same notation. It is several times faster than the general encoder, which matters because the audit
    writes every event through here.
    The one difference left, key order when a key holds a character outside the BMP (JCS sorts by UTF-16
    code units), is ruled out by looking for such characters in the output; anything else goes through
    the general encoder."""
    if plain_numbers:
        try:
            fast = _COMPACT_SORTED.encode(value).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError):
            pass
        else:
            if not _OUTSIDE_BMP.search(fast):
                return fast
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


class ParsedBody(NamedTuple):
    is_json: bool
    value: JSON  # the parsed JSON, or the body as base64 text when it is not canonicalisable JSON
    plain_numbers: bool  # every number in it is written alike by Python and JCS (see canonical_bytes)


class _Numbers:
    """Notes, while parsing, any number that needs JCS's own number formatting."""

    def __init__(self) -> None:
        self.other = False

    def float(self, text: str) -> float | int:
        number = float(text)
        if number.is_integer():
            if abs(number) <= MAX_EXACT_INT:
                # JCS writes an integral double as an integer (30.0 is "30"), so the int is the same JSON.
                return int(number)
            self.other = True  # Python writes 2**53 as "9007199254740992.0", JCS without the ".0"
            return number
        low, high = PLAIN_FLOATS
        if not low <= abs(number) < high:
            self.other = True
        return number

    def int(self, text: str) -> int:
        number = int(text)
        if abs(number) > MAX_EXACT_INT:
            self.other = True
        return number


def parse_json_body(data: bytes) -> ParsedBody:
    """Decide how a message body is stored: ``(True, value, ...)`` for JSON that canonicalises
    losslessly, ``(False, base64 text, ...)`` otherwise.

    Bodies with duplicate keys, NaN/Infinity, integers beyond 2**53 or nesting deeper than Python's
    parser goes are not canonicalisable without losing information, so they are kept byte-exact as base64
    instead of being silently normalised.
    """
    numbers = _Numbers()
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=numbers.float,
            parse_int=numbers.int,
        )
        # Raises for what JCS cannot write exactly: integers beyond 2**53, lone surrogates.
        canonical_bytes(value, plain_numbers=not numbers.other)
    except (UnicodeDecodeError, ValueError, RecursionError, rfc8785.CanonicalizationError):
        # RecursionError: nested deeper than Python parses; kept byte-exact like any other non-JSON body.
        return ParsedBody(False, base64.b64encode(data).decode("ascii"), True)
    return ParsedBody(True, value, not numbers.other)
