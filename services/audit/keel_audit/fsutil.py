"""Crash-safe file writes: a temp file in the same directory, fsync, then an atomic publish."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TEMP_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, overwrite: bool = False, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    Without ``overwrite`` the publish step is ``link(2)``, which fails if ``path`` exists, so two writers
    racing for the same name cannot both win and an existing file is never replaced (``rename(2)``
    would silently replace it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_MARK}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.chmod(mode)
        if overwrite:
            temp.replace(path)
        else:
            try:
                os.link(temp, path)  # raises FileExistsError instead of replacing
            finally:
                temp.unlink()
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
