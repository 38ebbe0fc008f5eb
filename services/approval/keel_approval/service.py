"""The approval service's use cases, independent of HTTP and NATS: record a request, decide, expire,
publish decisions, rebuild. The store calls are blocking (SQLAlchemy) and run in worker threads."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import datetime

from keel_approval import domain
from keel_approval.approvers import ApproverDirectory
from keel_approval.domain import Approver, Conflict, DecisionRefused, Forbidden, NotFound, Status
from keel_approval.events import as_message
from keel_approval.metrics import DECISIONS, PUBLISH_FAILURES, REFUSALS, VOTES, WAIT_SECONDS
from keel_approval.records import ApprovalRecord
from keel_approval.store import ApprovalStore, Decided, RequestApplied
from keel_approval.writes import WriteOutcome, write_outcome
from keel_contracts.approvals import (
    DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES,
    ApprovalRequested,
    ApprovalWithdrawn,
    approval_payload_bytes,
    payload_hash,
)
from keel_contracts.codec import ContractViolation
from keel_contracts.envelope import Message
from keel_shared.logging import get_logger

log = get_logger(__name__)

Publish = Callable[[Message], Awaitable[None]]
Schedule = Callable[[ApprovalRecord], Awaitable[None]]
#: The events of one run (workflow, run id), in stream order, as their rightful emitters stored them.
ReadRun = Callable[[str, str], Awaitable[list[Message]]]

#: Settled write outcomes remembered (they can no longer change); beyond it the oldest are read again.
MAX_REMEMBERED_WRITES = 10_000


class ApprovalService:
    def __init__(
        self,
        store: ApprovalStore,
        directory: ApproverDirectory,
        publish: Publish,
        schedule: Schedule,
        clock: Callable[[], datetime],
        max_payload_bytes: int = DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES,
        read_run: ReadRun | None = None,
    ) -> None:
        self.store = store
        self._read_run = read_run
        self._writes: dict[str, WriteOutcome] = {}
        self.max_payload_bytes = max_payload_bytes
        self.directory = directory
        self._publish = publish
        self._schedule = schedule
        self._clock = clock
        self._outbox_kick = asyncio.Event()

    # --- requests ----------------------------------------------------------------------------------
    async def on_requested(self, event: ApprovalRequested, seq: int) -> RequestApplied:
        try:
            expected = payload_hash(event.body.payload)
        except ValueError as exc:  # a number JSON cannot carry (1e400 parses as inf): no hash to bind to
            raise ContractViolation("invalid", f"body.payload has no canonical JSON: {exc}") from None
        if event.body.payload_hash != expected:
            # Approving would bind to a hash nobody can reproduce from what the approver sees.
            raise ContractViolation(
                "invalid", f"payload_hash {event.body.payload_hash} is not the hash of the payload ({expected})"
            )
        applied = await asyncio.to_thread(self.store.apply_requested, event, seq)
        for old in applied.superseded:
            DECISIONS.labels(Status.SUPERSEDED.value).inc()
            log.info("approval_superseded", approval_id=old, by=event.body.approval_id, run_id=event.run_id)
        size = approval_payload_bytes(event.body.payload)
        if applied.record.pending and size > self.max_payload_bytes:
            # The router stops such a run before asking; this one was asked for by a router that allows
            # more (its KEEL_MAX_APPROVAL_PAYLOAD_BYTES differs). Nobody will be shown it: deny it now.
            return await self._refuse(applied, size)
        if applied.record.pending:
            # Also on a redelivery: scheduling the same timer again replaces it, so this is idempotent.
            await self._schedule(applied.record)
        if applied.inserted:
            log.info(
                "approval_requested",
                approval_id=event.body.approval_id,
                run_id=event.run_id,
                roles=list(event.body.roles),
                expires_at=event.body.expires_at.isoformat(),
            )
        return applied

    async def _refuse(self, applied: RequestApplied, size: int) -> RequestApplied:
        approval_id = applied.record.approval_id
        reason = (
            f"limit max_approval_payload_bytes exceeded: the payload to approve is {size} bytes, limit "
            f"{self.max_payload_bytes} (KEEL_MAX_APPROVAL_PAYLOAD_BYTES of the approval service); not shown to "
            "any approver"
        )
        now = self._clock()
        decided = await asyncio.to_thread(self.store.decide, approval_id, lambda s: domain.refuse(s, now, reason))
        DECISIONS.labels(decided.record.status.value).inc()
        log.warning("approval_refused_too_large", approval_id=approval_id, payload_bytes=size)
        if decided.event is not None:
            await self._publish_one(approval_id, decided.event)
        return replace(applied, record=decided.record)

    async def on_withdrawn(self, event: ApprovalWithdrawn) -> ApprovalRecord | None:
        """The run that asked ended: its pending request can no longer be decided (409 `withdrawn`)."""
        record = await asyncio.to_thread(self.store.apply_withdrawn, event)
        if record is not None:
            DECISIONS.labels(Status.WITHDRAWN.value).inc()
            log.info(
                "approval_withdrawn", approval_id=record.approval_id, run_id=event.run_id, because=event.body.because
            )
        return record

    # --- reads -------------------------------------------------------------------------------------
    async def inbox(self, approver: Approver) -> list[ApprovalRecord]:
        """Pending approvals that name one of the approver's roles."""
        return await asyncio.to_thread(self.store.find, [Status.PENDING], approver.roles)

    async def history(self, approver: Approver, limit: int = 200) -> list[ApprovalRecord]:
        settled = [s for s in Status if s is not Status.PENDING]
        return await asyncio.to_thread(self.store.find, settled, approver.roles, limit)

    async def visible(self, approver: Approver, approval_id: str) -> ApprovalRecord:
        """One approval, if the approver holds one of its roles: the payload of someone else's write is
        shown only to those who could approve it."""
        record = await asyncio.to_thread(self.store.get, approval_id)
        if record is None:
            raise NotFound("not_found", f"no approval {approval_id}")
        if not domain.eligible_roles(record.state(), approver):
            raise Forbidden("role_mismatch", f"approval {approval_id} needs the role {' or '.join(record.roles)}")
        return record

    async def write_of(self, record: ApprovalRecord) -> WriteOutcome | None:
        """Whether the write a granted approval unlocked happened (None: nothing was granted, or this service
        cannot read runs)."""
        if record.status is not Status.APPROVED or self._read_run is None:
            return None
        known = self._writes.get(record.approval_id)
        if known is not None:
            return known
        outcome = write_outcome(record.approval_id, await self._read_run(record.workflow, record.run_id))
        if outcome.final:
            if len(self._writes) >= MAX_REMEMBERED_WRITES:
                self._writes.pop(next(iter(self._writes)))
            self._writes[record.approval_id] = outcome
        return outcome

    # --- decisions ---------------------------------------------------------------------------------
    async def approve(
        self, approval_id: str, approver: Approver, payload_hash_: str, reason: str = "", role: str | None = None
    ) -> Decided:
        now = self._clock()
        return await self._decide(
            approval_id, approver, lambda state: domain.approve(state, approver, payload_hash_, now, reason, role)
        )

    async def deny(
        self, approval_id: str, approver: Approver, payload_hash_: str, reason: str, role: str | None = None
    ) -> Decided:
        now = self._clock()
        return await self._decide(
            approval_id, approver, lambda state: domain.deny(state, approver, payload_hash_, now, reason, role)
        )

    async def _decide(
        self, approval_id: str, approver: Approver, rule: Callable[[domain.ApprovalState], domain.Decision]
    ) -> Decided:
        try:
            decided = await asyncio.to_thread(self.store.decide, approval_id, rule)
        except DecisionRefused as exc:
            REFUSALS.labels(exc.code).inc()
            log.info("decision_refused", approval_id=approval_id, approver=approver.name, code=exc.code)
            if isinstance(exc, Conflict) and exc.code == "expired":
                # Its timer has not fired yet (or is lost): expire it now, so the run escalates.
                await self.expire(approval_id)
            raise
        vote = decided.decision.vote
        log.info(
            "approval_vote" if decided.event is None else "approval_decided",
            approval_id=approval_id,
            approver=approver.name,
            role=vote.role,
            status=decided.record.status.value,
        )
        if decided.event is None:
            VOTES.inc()
        else:
            DECISIONS.labels(decided.record.status.value).inc()
            _observe_wait(decided.record)
            published = await self._publish_one(approval_id, decided.event)
            decided = replace(decided, record=replace(decided.record, published=published))
        return decided

    async def expire(self, approval_id: str) -> ApprovalRecord | None:
        """Expire a pending approval whose time has passed. Raises `TooEarly` before its time."""
        result = await asyncio.to_thread(self.store.expire, approval_id, self._clock())
        if result is None:
            return None
        record, event = result
        DECISIONS.labels(record.status.value).inc()
        _observe_wait(record)
        log.info("approval_expired", approval_id=approval_id, escalate_to=record.escalate_to)
        await self._publish_one(approval_id, event)
        return record

    # --- publishing --------------------------------------------------------------------------------
    async def _publish_one(self, approval_id: str, event: Message) -> bool:
        try:
            await self._publish(event)
        except Exception as exc:
            # The decision is committed; the outbox loop publishes it when NATS is back.
            PUBLISH_FAILURES.inc()
            log.warning("decision_publish_deferred", approval_id=approval_id, error=str(exc) or type(exc).__name__)
            self._outbox_kick.set()
            return False
        await asyncio.to_thread(self.store.mark_published, approval_id)
        return True

    async def flush_outbox(self) -> int:
        published = 0
        for approval_id, doc in await asyncio.to_thread(self.store.unpublished):
            if await self._publish_one(approval_id, as_message(doc)):
                published += 1
            else:
                break
        return published

    async def run_outbox(self, stop: asyncio.Event, every: float = 2.0) -> None:
        while not stop.is_set():
            self._outbox_kick.clear()
            try:
                await self.flush_outbox()
            except Exception:
                log.exception("outbox_flush_failed")
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._outbox_kick.wait())}
            _, pending = await asyncio.wait(waiters, timeout=every, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()

    async def reschedule_pending(self) -> int:
        """Schedule the expiry of every pending approval again: after a restore or a lost schedule, the
        timers are re-created from the store (the same subject replaces an existing schedule)."""
        pending = await asyncio.to_thread(self.store.find, [Status.PENDING], None, 100_000)
        for record in pending:
            await self._schedule(record)
        return len(pending)

    # --- rebuild -----------------------------------------------------------------------------------
    async def rebuild(self, events: Iterable[tuple[int, Message]], *, wipe: bool) -> int:
        return await asyncio.to_thread(self.store.replay, list(events), wipe=wipe)


def _observe_wait(record: ApprovalRecord) -> None:
    """How long the request waited for its decision (or its expiry): the approval wait time metric."""
    settled = record.decided_at
    if settled is not None:
        WAIT_SECONDS.labels(record.status.value).observe(max(0.0, (settled - record.requested_at).total_seconds()))
