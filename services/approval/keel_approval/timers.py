"""Expiry timers: one NATS message schedule per pending approval on KEEL_TIMERS.

No process holds a wait: the schedule lives in the stream, survives restarts of the service and of the
server, and fires a copy to the approval service's own fire subject when the approval is due.
Scheduling again replaces the earlier schedule (one per subject), so re-scheduling is always safe, and a
firing for an approval that was decided meanwhile does nothing.
"""

import hashlib
from datetime import UTC, datetime
from typing import Literal

from keel_approval.events import approval_key
from keel_approval.records import ApprovalRecord
from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.codec import encode
from keel_contracts.envelope import Body, KeyText, Message

# Fired copies are read within seconds; the TTL only keeps an unread one from staying forever.
FIRED_TTL = "168h"


class ExpiryBody(Body):
    approval_id: KeyText
    expires_at: datetime


class ApprovalExpiryDue(Message):
    """Internal to the approval service: produced and consumed by it alone."""

    type: Literal["approval_expiry_due"] = "approval_expiry_due"
    body: ExpiryBody


def expiry_timer(record: ApprovalRecord) -> tuple[str, bytes, dict[str, str]]:
    """(subject, data, headers) of the schedule that fires when `record` expires."""
    key = approval_key(record.approval_id)
    due = record.expires_at.astimezone(UTC)
    dedupe = f"{record.run_id}:approval:{key}:expiry:{due.isoformat()}"
    message = ApprovalExpiryDue(
        id=hashlib.sha256(dedupe.encode()).hexdigest()[:32],
        run_id=record.run_id,
        workflow=record.workflow,
        tenant=record.tenant,
        step_id=record.step_id,
        correlation_id=record.correlation_id,
        causation_id=record.request_event_id,
        actor=s.APPROVAL,
        dedupe_key=dedupe,
        body=ExpiryBody(approval_id=record.approval_id, expires_at=due),
    )
    headers = {
        "Nats-Msg-Id": dedupe,
        "Nats-Schedule": f"@at {due.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
        "Nats-Schedule-Target": t.approval_fire_subject(record.workflow, record.run_id, key),
        "Nats-Schedule-TTL": FIRED_TTL,
    }
    return t.approval_schedule_subject(record.workflow, record.run_id, key), encode(message), headers
