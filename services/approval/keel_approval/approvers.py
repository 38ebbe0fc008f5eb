"""Who may approve: named approvers with roles and a hashed API token, and their inbox sessions."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from keel_approval.db import Database
from keel_approval.domain import Approver
from keel_approval.models import ApproverRow, SessionRow
from keel_approval.tokens import hash_token, new_session_token, new_token, token_matches
from keel_contracts.subjects import TOKEN_RE

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class ApproverError(ValueError):
    pass


@dataclass(frozen=True)
class ApproverInfo:
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    active: bool


def _check(name: str, roles: list[str]) -> None:
    if not NAME_RE.fullmatch(name):
        raise ApproverError(f"approver name must match {NAME_RE.pattern}, got {name!r}")
    if not roles:
        raise ApproverError("an approver needs at least one role")
    for role in roles:
        if not TOKEN_RE.fullmatch(role):
            raise ApproverError(f"role must match [A-Za-z0-9_-]{{1,128}}, got {role!r}")


class ApproverDirectory:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self._clock = clock

    # --- administration (`keel approvers ...`) -----------------------------------------------------
    def add(self, name: str, roles: list[str]) -> str:
        """Create an approver; returns its token, the only time it is ever available in plain."""
        _check(name, roles)
        token = new_token()
        with self.db.sessions.begin() as session:
            if session.scalar(select(ApproverRow).where(ApproverRow.name == name)) is not None:
                raise ApproverError(f"approver {name} already exists (use `keel approvers rotate` for a new token)")
            session.add(
                ApproverRow(
                    name=name,
                    roles=sorted(set(roles)),
                    token_hash=hash_token(token),
                    created_at=self._clock(),
                    disabled_at=None,
                )
            )
        return token

    def rotate(self, name: str) -> str:
        """A new token for an approver; the old one and every open session stop working."""
        token = new_token()
        with self.db.sessions.begin() as session:
            row = session.scalar(select(ApproverRow).where(ApproverRow.name == name).with_for_update())
            if row is None:
                raise ApproverError(f"no approver {name}")
            row.token_hash = hash_token(token)
            row.disabled_at = None
            session.execute(delete(SessionRow).where(SessionRow.approver_id == row.id))
        return token

    def disable(self, name: str) -> None:
        with self.db.sessions.begin() as session:
            row = session.scalar(select(ApproverRow).where(ApproverRow.name == name).with_for_update())
            if row is None:
                raise ApproverError(f"no approver {name}")
            row.disabled_at = row.disabled_at or self._clock()
            session.execute(delete(SessionRow).where(SessionRow.approver_id == row.id))

    def all(self) -> list[ApproverInfo]:
        with self.db.sessions() as session:
            rows = session.scalars(select(ApproverRow).order_by(ApproverRow.name)).all()
            return [ApproverInfo(r.name, tuple(r.roles), r.created_at, r.disabled_at is None) for r in rows]

    # --- authentication ----------------------------------------------------------------------------
    def authenticate(self, token: str) -> Approver | None:
        """The active approver holding this API token, or None."""
        if not token:
            return None
        digest = hash_token(token)
        with self.db.sessions() as session:
            row = session.scalar(select(ApproverRow).where(ApproverRow.token_hash == digest))
            # The lookup is by digest; the compare re-checks in constant time so a future change to the
            # lookup (a prefix index, say) cannot turn into a timing oracle.
            if row is None or row.disabled_at is not None or not token_matches(token, row.token_hash):
                return None
            return Approver(row.name, frozenset(row.roles))

    def open_session(self, approver: Approver, hours: float) -> str:
        token = new_session_token()
        now = self._clock()
        with self.db.sessions.begin() as session:
            row = session.scalar(select(ApproverRow).where(ApproverRow.name == approver.name))
            if row is None:
                raise ApproverError(f"no approver {approver.name}")
            # Expired sessions are swept whenever someone logs in, so the table stays small.
            session.execute(delete(SessionRow).where(SessionRow.expires_at < now))
            session.add(
                SessionRow(
                    token_hash=hash_token(token),
                    approver_id=row.id,
                    created_at=now,
                    expires_at=now + timedelta(hours=hours),
                )
            )
        return token

    def session_approver(self, token: str) -> Approver | None:
        if not token:
            return None
        with self.db.sessions() as session:
            found = session.execute(
                select(SessionRow, ApproverRow)
                .join(ApproverRow, ApproverRow.id == SessionRow.approver_id)
                .where(SessionRow.token_hash == hash_token(token))
            ).first()
            if found is None:
                return None
            sess, row = found
            if sess.expires_at <= self._clock() or row.disabled_at is not None:
                return None
            if not token_matches(token, sess.token_hash):
                return None
            return Approver(row.name, frozenset(row.roles))

    def close_session(self, token: str) -> None:
        with self.db.sessions.begin() as session:
            session.execute(delete(SessionRow).where(SessionRow.token_hash == hash_token(token)))
