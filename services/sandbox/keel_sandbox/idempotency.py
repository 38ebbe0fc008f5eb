"""Exactly-once writes: every write runs through `IdempotentWriter.execute`.

A keyed write stores its response under the key in the same transaction as the write and its write-log row,
so either all three land or none does. A repeat of the same request with the same key gets the stored
response back without touching the systems of record; the same key with a different request is refused.
Refusals (4xx) are not stored: nothing was written, so a retry is evaluated afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from keel_sandbox.errors import SandboxError
from keel_sandbox.models import IdempotencyRecord, WriteLog, utcnow

REPLAY_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class CallerContext:
    idempotency_key: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    traceparent: str | None = None

    def provenance(self) -> dict[str, str | None]:
        """Column values for the `Provenance` mixin of any row this write creates."""
        return {
            "idempotency_key": self.idempotency_key,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "traceparent": self.traceparent,
        }


@dataclass(frozen=True)
class WriteOutcome:
    status_code: int
    body: dict[str, Any]
    table: str
    resource_id: str


def render_json(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def request_fingerprint(method: str, path: str, payload: Any) -> str:
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "body": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class IdempotentWriter:
    def __init__(self, sessions: sessionmaker[Session], caller: CallerContext, method: str, path: str):
        self._sessions = sessions
        self.caller = caller
        self._method = method.upper()
        self._path = path

    def execute(
        self,
        operation: str,
        payload: BaseModel | None,
        perform: Callable[[Session, CallerContext], WriteOutcome],
    ) -> Response:
        fingerprint = request_fingerprint(
            self._method,
            self._path,
            None if payload is None else payload.model_dump(mode="json", exclude_unset=True),
        )
        key = self.caller.idempotency_key
        with self._sessions() as session:
            if key is not None:
                replayed = self._replay(session, key, fingerprint)
                if replayed is not None:
                    return replayed
            try:
                outcome = perform(session, self.caller)
                rendered = render_json(outcome.body)
                session.add(
                    WriteLog(
                        operation=operation,
                        table_name=outcome.table,
                        resource_id=outcome.resource_id,
                        status_code=outcome.status_code,
                        **self.caller.provenance(),
                    )
                )
                if key is not None:
                    session.add(
                        IdempotencyRecord(
                            key=key,
                            fingerprint=fingerprint,
                            operation=operation,
                            method=self._method,
                            path=self._path,
                            status_code=outcome.status_code,
                            response_body=rendered,
                        )
                    )
                session.commit()
            except (IntegrityError, SandboxError):
                # On PostgreSQL two requests with one key can both miss the lookup. The loser then either
                # trips a business rule the winner's write changed (a second full refund) or fails to insert
                # the key; either way its transaction rolls back, and it answers as a replay of the winner.
                session.rollback()
                if key is None:
                    raise
                replayed = self._replay(session, key, fingerprint)
                if replayed is None:
                    raise
                return replayed
        return Response(rendered, status_code=outcome.status_code, media_type="application/json")

    def _replay(self, session: Session, key: str, fingerprint: str) -> Response | None:
        record = session.get(IdempotencyRecord, key)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            session.rollback()
            raise SandboxError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
                {
                    "idempotency_key": key,
                    "original_operation": record.operation,
                    "original_path": record.path,
                },
            )
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(replay_count=IdempotencyRecord.replay_count + 1, last_replayed_at=utcnow())
        )
        session.commit()
        return Response(
            record.response_body,
            status_code=record.status_code,
            media_type="application/json",
            headers={REPLAY_HEADER: "true"},
        )


def caller_context(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
    run_id: Annotated[str | None, Header(alias="X-Keel-Run-Id", max_length=255)] = None,
    step_id: Annotated[str | None, Header(alias="X-Keel-Step-Id", max_length=255)] = None,
    traceparent: Annotated[str | None, Header(alias="traceparent", max_length=255)] = None,
) -> CallerContext:
    return CallerContext(idempotency_key=idempotency_key, run_id=run_id, step_id=step_id, traceparent=traceparent)
