"""Source records (what the stream delivered) and the canonical log records built from them.

Every log record is a JSON object with ``t`` (type), ``v`` (schema version) and ``id``. Types:

* ``event``: one stream message. ``data`` holds the canonical JSON body, or ``data_b64`` the exact bytes
  when the body is not losslessly canonicalisable JSON. ``redacted`` lists JSON pointers whose values
  were replaced by salted commitments (see :mod:`keel_audit.redaction`).
* ``gap``: stream sequences ``from_seq..to_seq`` that never reached the audit writer.
* ``key_change``: the signing key changes after this segment (signed by the outgoing key).
* ``erasure``: the clear payload of record ``target`` was deleted from the erasable store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from keel_audit.canonical import JSON, format_time, parse_json_body

RECORD_VERSION: Final = 1

EVENT: Final = "event"
GAP: Final = "gap"
KEY_CHANGE: Final = "key_change"
ERASURE: Final = "erasure"
RECORD_TYPES: Final = frozenset({EVENT, GAP, KEY_CHANGE, ERASURE})

#: Headers kept in the log. Nats-Msg-Id is the publisher's dedupe key and links a record to the
#: envelope that produced it; ``Keel-`` headers are Keel's own metadata. Everything else (tracing,
#: Nats-Expected-* publish preconditions) is transport detail whose presence would make re-projection
#: depend on the publishing client, so it is dropped.
DEFAULT_KEPT_HEADERS: Final = frozenset({"Nats-Msg-Id"})
DEFAULT_KEPT_HEADER_PREFIXES: Final = ("Keel-",)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One message of the source stream, as the NATS wiring hands it to the writer."""

    stream: str
    seq: int
    subject: str
    time: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    data: bytes = b""


def event_id(stream: str, seq: int) -> str:
    return f"{stream}:{seq}"


def kept_headers(
    headers: Mapping[str, str],
    names: Collection[str] = DEFAULT_KEPT_HEADERS,
    prefixes: Sequence[str] = DEFAULT_KEPT_HEADER_PREFIXES,
) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in names or k.startswith(tuple(prefixes))}


#: Given the subject and the parsed JSON body, the JSON pointers (RFC 6901) to store as commitments.
SensitivePaths = Callable[[str, JSON], Collection[str]]


def no_sensitive_paths(subject: str, body: JSON) -> Collection[str]:
    return ()


def fixed_sensitive_paths(*pointers: str) -> SensitivePaths:
    """The same pointers for every event; pointers absent from a body are simply not applied."""
    frozen = tuple(pointers)

    def paths(subject: str, body: JSON) -> Collection[str]:
        return frozen

    return paths


class EventRecord(NamedTuple):
    record: dict[str, Any]
    plain_numbers: bool  # no number in it needs JCS's own formatting (canonical.canonical_bytes)


def event_record(source: SourceRecord, *, headers: Mapping[str, str] | None = None) -> EventRecord:
    """The log record of one stream message, before any redaction."""
    is_json, body, plain_numbers = parse_json_body(source.data)
    record: dict[str, Any] = {
        "t": EVENT,
        "v": RECORD_VERSION,
        "id": event_id(source.stream, source.seq),
        "stream": source.stream,
        "seq": source.seq,
        "subject": source.subject,
        "time": format_time(source.time),
        "headers": kept_headers(source.headers) if headers is None else dict(headers),
    }
    record["data" if is_json else "data_b64"] = body
    return EventRecord(record, plain_numbers)


def gap_record(stream: str, from_seq: int, to_seq: int) -> dict[str, Any]:
    # No observation time: re-projecting the same stream must produce the same bytes.
    return {
        "t": GAP,
        "v": RECORD_VERSION,
        "id": f"{stream}:gap:{from_seq}-{to_seq}",
        "stream": stream,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "reason": "sequence not delivered to the audit writer",
    }


def key_change_record(
    old_key_id: str, new_key_id: str, new_public_key: str, from_segment: int, at: datetime
) -> dict[str, Any]:
    return {
        "t": KEY_CHANGE,
        "v": RECORD_VERSION,
        "id": f"key:{new_key_id}",
        "old_key_id": old_key_id,
        "new_key_id": new_key_id,
        "new_public_key": new_public_key,
        "from_segment": from_segment,
        "at": format_time(at),
    }


def erasure_record(
    target: str, pointers: Sequence[str], reason: str, requested_by: str, at: datetime
) -> dict[str, Any]:
    return {
        "t": ERASURE,
        "v": RECORD_VERSION,
        "id": f"erasure:{target}",
        "target": target,
        "pointers": list(pointers),
        "reason": reason,
        "requested_by": requested_by,
        "at": format_time(at),
    }


def subject_tokens(subject: str) -> list[str] | None:
    """Tokens of a run-event subject ``keel.run.<workflow>.<run_id>.<emitter>.<event_type...>``."""
    tokens = subject.split(".")
    if len(tokens) < 6 or tokens[0] != "keel" or tokens[1] != "run":
        return None
    return tokens


def run_id_of(subject: str) -> str | None:
    tokens = subject_tokens(subject)
    return tokens[3] if tokens else None


def event_type_of(subject: str) -> str:
    """The event type from the subject (tokens after the emitter); the whole subject if not a run subject."""
    tokens = subject_tokens(subject)
    return ".".join(tokens[5:]) if tokens else subject
