"""Approvers and sessions: tokens stored hashed, disabled and rotated tokens stop working; the
migrations produce exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from approval_testkit import Clock
from sqlalchemy import select

from keel_approval.approvers import ApproverDirectory, ApproverError
from keel_approval.client import TokenNotFound, load_tokens, resolve_token, save_token
from keel_approval.db import Database
from keel_approval.diff import diff
from keel_approval.models import ApproverRow, Base


def test_a_token_authenticates_its_approver_and_is_stored_only_as_a_digest(
    directory: ApproverDirectory, db: Database
) -> None:
    token = directory.add("fiona", ["finance", "finance"])
    approver = directory.authenticate(token)
    assert approver is not None and approver.name == "fiona" and approver.roles == {"finance"}
    with db.sessions() as session:
        row = session.scalars(select(ApproverRow)).one()
        assert token not in row.token_hash and row.roles == ["finance"]
    assert directory.authenticate(token[:-1]) is None and directory.authenticate("") is None


def test_names_and_roles_are_checked_and_names_are_unique(directory: ApproverDirectory) -> None:
    directory.add("fiona", ["finance"])
    with pytest.raises(ApproverError, match="already exists"):
        directory.add("fiona", ["security"])
    with pytest.raises(ApproverError):
        directory.add("bad name", ["finance"])
    with pytest.raises(ApproverError):
        directory.add("sam", [])
    with pytest.raises(ApproverError):
        directory.add("sam", ["not.a.token"])


def test_disabling_and_rotating_revoke_tokens_and_sessions(directory: ApproverDirectory) -> None:
    token = directory.add("fiona", ["finance"])
    approver = directory.authenticate(token)
    assert approver is not None
    session = directory.open_session(approver, hours=1)
    assert directory.session_approver(session) == approver
    new = directory.rotate("fiona")
    assert directory.authenticate(token) is None and directory.authenticate(new) == approver
    assert directory.session_approver(session) is None
    directory.disable("fiona")
    assert directory.authenticate(new) is None
    assert [a.active for a in directory.all()] == [False]


def test_sessions_expire(directory: ApproverDirectory, clock: Clock) -> None:
    approver = directory.authenticate(directory.add("fiona", ["finance"]))
    assert approver is not None
    session = directory.open_session(approver, hours=1)
    clock.advance(hours=1, seconds=1)
    assert directory.session_approver(session) is None


def test_the_local_token_file_is_private_and_backs_as_user(tmp_path: Path) -> None:
    path = save_token(tmp_path, "fiona", "kat_secret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_tokens(tmp_path) == {"fiona": "kat_secret"}
    assert resolve_token(None, "fiona", tmp_path) == "kat_secret"
    assert resolve_token("kat_explicit", "fiona", tmp_path) == "kat_explicit"
    with pytest.raises(TokenNotFound):
        resolve_token(None, "sam", tmp_path)


def test_the_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert db.current_revision() == Database.head_revision()


def test_the_diff_names_each_changed_field() -> None:
    lines = diff({"amount": 1, "meta": {"a": 1, "b": 2}, "gone": True}, {"amount": 2, "meta": {"a": 1}, "new": [1]})
    assert [(d.path, d.change) for d in lines] == [
        ("amount", "changed"),
        ("gone", "removed"),
        ("meta.a", "unchanged"),
        ("meta.b", "removed"),
        ("new", "added"),
    ]
