"""Fixtures for the audit core tests (helpers live in audit_testlib, a name unique in the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testlib import AuditLog, make_log


@pytest.fixture
def audit_log(tmp_path: Path) -> AuditLog:
    """20 events of two runs in 5 sealed segments of 4 records, all valid."""
    log = make_log(tmp_path / "audit")
    log.open()
    for seq in range(1, 21):
        log.append(seq, run="r-1" if seq % 2 else "r-2")
    assert log.writer is not None and log.writer.next_index == 5
    return log
