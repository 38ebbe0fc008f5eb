"""The published list of verification keys with their validity windows.

A key is valid for a window of the log expressed twice: by segment index (``first_segment`` ..
``last_segment``), which is bound to the log's position and cannot be moved by a signer with a stolen
key, and by wall-clock time (``valid_from`` .. ``valid_until``), which is what people reason about. The
verifier enforces both, so a retired key cannot sign later segments and a new key cannot re-sign older
ones (the systemd CVE-2023-31439 lesson in the anchors doc).

File format (``keyring.json``, RFC 8785 JSON)::

    {"v": 1, "stream": "KEEL_EVENTS",
     "keys": [{"key_id": "...", "algorithm": "ed25519", "public_key": "<base64 raw 32 bytes>",
               "valid_from": "<RFC 3339>", "valid_until": null | "<RFC 3339>",
               "first_segment": 0, "last_segment": null | 41}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from keel_audit.canonical import canonical_bytes, format_time, parse_time
from keel_audit.errors import AuditError
from keel_audit.fsutil import atomic_write
from keel_audit.signing import decode_public_key, encode_public_key, key_id_of


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_id: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None = None
    first_segment: int = 0
    last_segment: int | None = None

    def window_problem(self, segment_index: int, sealed_at: datetime) -> str | None:
        """Why this key may not sign segment ``segment_index`` sealed at ``sealed_at`` (None if it may)."""
        if segment_index < self.first_segment or (self.last_segment is not None and segment_index > self.last_segment):
            last = "" if self.last_segment is None else str(self.last_segment)
            return f"key {self.key_id} is valid for segments {self.first_segment}..{last}, not {segment_index}"
        if sealed_at < self.valid_from or (self.valid_until is not None and sealed_at > self.valid_until):
            until = "" if self.valid_until is None else format_time(self.valid_until)
            return (
                f"key {self.key_id} is valid from {format_time(self.valid_from)} to {until or 'now'}, "
                f"segment {segment_index} was sealed at {format_time(sealed_at)}"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algorithm": "ed25519",
            "public_key": encode_public_key(self.public_key),
            "valid_from": format_time(self.valid_from),
            "valid_until": None if self.valid_until is None else format_time(self.valid_until),
            "first_segment": self.first_segment,
            "last_segment": self.last_segment,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KeyEntry:
        if obj.get("algorithm", "ed25519") != "ed25519":
            raise AuditError(f"keyring: unsupported algorithm {obj.get('algorithm')!r}")
        public_key = decode_public_key(obj["public_key"])
        if key_id_of(public_key) != obj["key_id"]:
            raise AuditError(f"keyring: key id {obj['key_id']} does not match its public key")
        return cls(
            key_id=obj["key_id"],
            public_key=public_key,
            valid_from=parse_time(obj["valid_from"]),
            valid_until=None if obj.get("valid_until") is None else parse_time(obj["valid_until"]),
            first_segment=int(obj.get("first_segment", 0)),
            last_segment=None if obj.get("last_segment") is None else int(obj["last_segment"]),
        )


@dataclass(frozen=True, slots=True)
class Keyring:
    stream: str
    keys: tuple[KeyEntry, ...] = ()

    def get(self, key_id: str) -> KeyEntry | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def with_key(self, entry: KeyEntry) -> Keyring:
        if self.get(entry.key_id) is not None:
            raise AuditError(f"key {entry.key_id} is already in the keyring")
        return replace(self, keys=(*self.keys, entry))

    def retire(self, key_id: str, last_segment: int, valid_until: datetime) -> Keyring:
        keys = tuple(
            replace(k, last_segment=last_segment, valid_until=valid_until) if k.key_id == key_id else k
            for k in self.keys
        )
        return replace(self, keys=keys)

    def to_bytes(self) -> bytes:
        return canonical_bytes({"v": 1, "stream": self.stream, "keys": [k.to_json() for k in self.keys]}) + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Keyring:
        try:
            obj = json.loads(raw)
            return cls(stream=obj["stream"], keys=tuple(KeyEntry.from_json(k) for k in obj["keys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"keyring is not valid: {exc}") from exc


class KeyringStore(Protocol):
    """Where the writer publishes the keyring (a file here; an object store or KV later)."""

    def load(self) -> Keyring | None: ...

    def save(self, keyring: Keyring) -> None: ...


class KeyringFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Keyring | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read keyring {self.path}: {exc}") from exc
        return Keyring.from_bytes(raw)

    def save(self, keyring: Keyring) -> None:
        # The keyring is a publication that grows (keys are added and retired, never removed), so unlike
        # segments it is replaced in place, atomically.
        atomic_write(self.path, keyring.to_bytes(), overwrite=True)
