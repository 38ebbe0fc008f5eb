"""The erasable store: clear values of redacted fields, one file per record id, deletable.

Kept apart from the segments on purpose: segments are append-only evidence, this store is subject to
retention and erasure requests. Deleting an entry never breaks verification of the log, because the
log only holds salted commitments; the erasure itself is logged as an ``erasure`` record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from keel_audit.errors import AuditError
from keel_audit.fsutil import atomic_write
from keel_audit.redaction import ClearPayload


class PayloadStore(Protocol):
    def put(self, payload: ClearPayload) -> None: ...

    def get(self, record_id: str) -> ClearPayload | None: ...

    def delete(self, record_id: str) -> bool:
        """Remove the clear payload; False if there was none."""
        ...


class DirectoryPayloadStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, record_id: str) -> Path:
        # quote() keeps ids readable ("KEEL_EVENTS%3A42.json") and makes "/" or ".." harmless.
        return self.directory / f"{quote(record_id, safe='')}.json"

    def put(self, payload: ClearPayload) -> None:
        # Overwrite is allowed: a record that was appended but not sealed before a crash is appended
        # again on redelivery with a fresh salt, and only the sealed one's commitment counts.
        atomic_write(self._path(payload.record_id), payload.to_bytes(), overwrite=True, mode=0o600)

    def get(self, record_id: str) -> ClearPayload | None:
        try:
            raw = self._path(record_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read clear payload of {record_id}: {exc}") from exc
        try:
            return ClearPayload.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"clear payload of {record_id} is unreadable: {exc}") from exc

    def delete(self, record_id: str) -> bool:
        path = self._path(record_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
