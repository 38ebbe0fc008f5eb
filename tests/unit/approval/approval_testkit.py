"""Building approval requests for tests: a refund that needs finance, an access change that needs security."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import JsonValue

from keel_approval.records import ApprovalRecord
from keel_contracts.approvals import ApprovalRequested, ApprovalRequestedBody, ApprovalTarget, payload_hash
from keel_contracts.envelope import Message
from keel_shared.signing import Signer

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

#: The approval service's decision key in these tests (its public key is the one a keyring would trust).
DECISION_SIGNER = Signer.generate()

REFUND: dict[str, JsonValue] = {"charge_id": "ch_1", "amount": 4200, "currency": "EUR", "note": "<b>bad</b>"}


def request(
    approval_id: str = "appr-1",
    *,
    run_id: str = "r1",
    workflow: str = "refund",
    roles: list[str] | None = None,
    quorum: int = 1,
    approves_step: str = "issue_refund",
    payload: dict[str, JsonValue] | None = None,
    before: dict[str, JsonValue] | None = None,
    requested_by: str = "agent:refund-bot",
    expires_at: datetime | None = None,
    escalate_to: str | None = "manager_review",
    occurred_at: datetime = T0,
    bad_hash: bool = False,
    **body: Any,
) -> ApprovalRequested:
    payload = dict(REFUND if payload is None else payload)
    return ApprovalRequested(
        run_id=run_id,
        workflow=workflow,
        step_id="approve_refund",
        correlation_id=f"corr-{run_id}",
        actor="router",
        dedupe_key=f"{run_id}:approval:{approval_id}:requested",
        occurred_at=occurred_at,
        body=ApprovalRequestedBody(
            approval_id=approval_id,
            roles=roles or ["finance"],
            quorum=quorum,
            approves_step=approves_step,
            tool="billing.refund",
            payload=payload,
            payload_hash="sha256:" + "0" * 64 if bad_hash else payload_hash(payload),
            before=before,
            target=ApprovalTarget(
                system="billing", operation="refund", record="ch_1", link="https://billing.example/charges/ch_1"
            ),
            summary=body.pop("summary", "Refund 42.00 EUR to ACME for a double charge"),
            evidence=body.pop("evidence", {"ticket": "T-9", "charges": 2}),
            reason=body.pop("reason", "policy requires approval for money: money -> finance"),
            requested_by=requested_by,
            expires_at=expires_at or occurred_at + timedelta(hours=1),
            escalate_to=escalate_to,
            **body,
        ),
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Outbox:
    """Records what the service publishes and schedules; `down` makes publishing fail like a lost server."""

    def __init__(self) -> None:
        self.published: list[Message] = []
        self.scheduled: list[ApprovalRecord] = []
        self.down = False

    async def publish(self, message: Message) -> None:
        if self.down:
            raise TimeoutError("nats is down")
        self.published.append(message)

    async def schedule(self, record: ApprovalRecord) -> None:
        self.scheduled.append(record)

    def types(self) -> list[str]:
        return [m.type for m in self.published]
