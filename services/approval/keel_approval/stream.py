"""Reading approval events back from KEEL_EVENTS, to rebuild the store."""

from keel_contracts import subjects as s
from keel_contracts import topology
from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalWithdrawn,
    payload_hash,
)
from keel_contracts.codec import ContractViolation
from keel_contracts.envelope import Message
from keel_shared.eventstore import EventStore
from keel_shared.logging import get_logger
from keel_shared.trust import read_event

log = get_logger(__name__)

APPROVAL_EVENTS = (ApprovalRequested, ApprovalGranted, ApprovalDenied, ApprovalExpired, ApprovalWithdrawn)


async def read_approval_events(events: EventStore, max_bytes: int) -> list[tuple[int, Message]]:
    """Every approval request and decision in the stream, in stream order."""
    stored = [
        item
        for subject in (*topology.event_subjects(*topology.APPROVAL_CONSUMES), s.emitter_filter(s.APPROVAL))
        for item in await events.read(subject)
    ]
    out: list[tuple[int, Message]] = []
    for item in sorted(stored, key=lambda e: e.seq):
        try:
            event = read_event(s.APPROVAL, item.subject, item.data, max_bytes)
        except ContractViolation as exc:
            # The consumer dead-lettered it when it arrived; a rebuild skips it the same way.
            log.warning("rebuild_skipped_event", seq=item.seq, subject=item.subject, reason=exc.reason)
            continue
        if isinstance(event, ApprovalRequested) and event.body.payload_hash != payload_hash(event.body.payload):
            log.warning("rebuild_skipped_event", seq=item.seq, subject=item.subject, reason="payload_hash")
            continue
        if isinstance(event, APPROVAL_EVENTS):
            out.append((item.seq, event))
    return out
