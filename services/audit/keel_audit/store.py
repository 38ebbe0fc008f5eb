"""Segment storage behind a small protocol, with a directory backend.

A JetStream object-store backend can implement :class:`SegmentStore` later; the writer and verifier
never look behind it. Stores are untrusted: the verifier recomputes every hash and never relies on a
backend's own digest (object-store digest, S3 ETag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from keel_audit.errors import AuditError, SegmentExistsError
from keel_audit.fsutil import TEMP_MARK, atomic_write

_NAME: Final = re.compile(r"^(\d{12})\.jsonl$")


class SegmentStore(Protocol):
    def indices(self) -> list[int]:
        """Indices of the stored segments, ascending."""
        ...

    def read(self, index: int) -> bytes:
        """The exact stored bytes; raises KeyError if there is no such segment."""
        ...

    def write(self, index: int, data: bytes) -> None:
        """Store a new segment durably; raises SegmentExistsError if ``index`` is taken."""
        ...

    def location(self, index: int) -> str:
        """Where segment ``index`` lives, for reports."""
        ...

    def strays(self) -> list[str]:
        """Entries that are not segments (leftover temp files, foreign files), for warnings."""
        ...


def segment_name(index: int) -> str:
    return f"{index:012d}.jsonl"


class DirectorySegmentStore:
    """Segments as ``<dir>/<index:012d>.jsonl``, written atomically, read-only once published."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def indices(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read(self, index: int) -> bytes:
        try:
            return (self.directory / segment_name(index)).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(index) from exc
        except OSError as exc:
            raise AuditError(f"cannot read segment {index}: {exc}") from exc

    def write(self, index: int, data: bytes) -> None:
        try:
            atomic_write(self.directory / segment_name(index), data, mode=0o444)
        except FileExistsError as exc:
            raise SegmentExistsError(f"segment {index} already exists in {self.directory}") from exc

    def location(self, index: int) -> str:
        return str(self.directory / segment_name(index))

    def strays(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if not _NAME.match(p.name))

    def remove_stale_temp_files(self) -> list[str]:
        """Delete temp files a crashed writer left behind (never a published segment)."""
        removed = []
        for path in self.directory.glob(f"{TEMP_MARK}*"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed


@dataclass(frozen=True, slots=True)
class AuditDirectory:
    """The default layout of an audit directory."""

    root: Path

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.json"

    @property
    def payloads(self) -> Path:
        return self.root / "payloads"
