"""Fixtures for the approval service's unit tests: a migrated SQLite store, a fake clock, a recording
publisher and scheduler, and the service built from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from approval_testkit import DECISION_SIGNER, Clock, Outbox

from keel_approval.approvers import ApproverDirectory
from keel_approval.db import Database
from keel_approval.service import ApprovalService
from keel_approval.store import ApprovalStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'approvals.db'}")
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def store(db: Database, clock: Clock) -> ApprovalStore:
    return ApprovalStore(db, clock, DECISION_SIGNER)


@pytest.fixture
def directory(db: Database, clock: Clock) -> ApproverDirectory:
    return ApproverDirectory(db, clock)


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def service(store: ApprovalStore, directory: ApproverDirectory, outbox: Outbox, clock: Clock) -> ApprovalService:
    return ApprovalService(store, directory, outbox.publish, outbox.schedule, clock)
