"""The approval service's process: NATS wiring (requests and expiry timers in, decisions and timers out)
plus the HTTP API and inbox, served by uvicorn on the same event loop."""

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from keel_approval.approvers import ApproverDirectory
from keel_approval.db import Database, database_url
from keel_approval.records import ApprovalRecord
from keel_approval.service import ApprovalService
from keel_approval.store import ApprovalStore, TooEarly, UnknownApproval
from keel_approval.stream import read_approval_events
from keel_approval.throttle import GuessThrottle
from keel_approval.timers import ApprovalExpiryDue, expiry_timer
from keel_approval.webapp import create_app
from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.approvals import ApprovalRequested, ApprovalWithdrawn
from keel_contracts.codec import ContractViolation, decode, decode_with
from keel_contracts.envelope import Message
from keel_shared import decisions
from keel_shared.consuming import Redeliver, current_message
from keel_shared.eventstore import EventStore
from keel_shared.http import EmbeddedServer, start_embedded
from keel_shared.logging import bound_context, get_logger
from keel_shared.publishing import publish_with_retry
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings
from keel_shared.trust import read_event

log = get_logger(__name__)

#: How often a withdrawal whose request is not stored yet is tried before it is dropped.
WITHDRAWAL_TRIES = 4

#: What the approval service's durable delivers from the run stream (`keel_contracts.topology`).
_RUN_EVENTS: TypeAdapter[ApprovalRequested | ApprovalWithdrawn] = TypeAdapter(
    Annotated[ApprovalRequested | ApprovalWithdrawn, Field(discriminator="type")]
)


class ApprovalRuntime(ServiceRuntime):
    def __init__(self, settings: KeelSettings) -> None:
        super().__init__(s.APPROVAL, settings)
        self.http: EmbeddedServer | None = None

    def health(self) -> dict[str, Any]:
        doc = super().health()
        serving = bool(self.http is not None and self.http.started)
        doc["http_serving"] = serving
        if not serving:
            doc["status"] = "unavailable"
        return doc


def build(settings: KeelSettings) -> ApprovalRuntime:
    runtime = ApprovalRuntime(settings)
    db = Database(database_url(settings))

    def clock() -> datetime:
        return datetime.now(UTC)

    # Its decisions are signed with this key; the router and executors trust its public key (decision 026).
    store = ApprovalStore(db, clock, decisions.KEYS.ensure(settings))
    directory = ApproverDirectory(db, clock)
    events: EventStore | None = None

    def event_store() -> EventStore:
        nonlocal events
        if events is None:
            events = EventStore(
                runtime.nc,
                runtime.js,
                s.APPROVAL,
                timeout=settings.publish_timeout,
                budget=settings.publish_retry_budget,
            )
        return events

    async def publish(message: Message) -> None:
        await event_store().append_unguarded(message)

    async def schedule(record: ApprovalRecord) -> None:
        subject, data, headers = expiry_timer(record)
        await publish_with_retry(
            runtime.js, subject, data, headers, timeout=settings.publish_timeout, budget=settings.publish_retry_budget
        )

    async def read_run(workflow: str, run_id: str) -> list[Message]:
        events: list[Message] = []
        for stored in await event_store().read(s.run_filter(workflow, run_id)):
            try:
                events.append(read_event(s.APPROVAL, stored.subject, stored.data, settings.max_message_bytes))
            except ContractViolation:
                continue  # unreadable, or not from its rightful emitter: it tells nothing about the write
        return events

    service = ApprovalService(
        store, directory, publish, schedule, clock, settings.max_approval_payload_bytes, read_run=read_run
    )
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    @runtime.pull_subscriber(
        s.APPROVAL_REQUESTS_DURABLE,
        concurrency=32,
        decode=lambda data: decode_with(_RUN_EVENTS, data, settings.max_message_bytes),
    )
    async def on_request(event: ApprovalRequested | ApprovalWithdrawn) -> None:
        with bound_context(run_id=event.run_id, approval_id=event.body.approval_id):
            if isinstance(event, ApprovalWithdrawn):
                try:
                    await service.on_withdrawn(event)
                except UnknownApproval as exc:
                    # Its request precedes it in the stream but may be handled a moment later (the durable
                    # hands out several messages at once); after a few tries it never came: nothing to withdraw.
                    if (current_message().metadata.num_delivered or 1) < WITHDRAWAL_TRIES:
                        raise Redeliver(1.0, "withdrawal of an approval whose request is not stored yet") from exc
                    log.warning("withdrawal_of_unknown_approval", approval_id=event.body.approval_id)
                return
            await service.on_requested(event, current_message().stream_seq or 0)

    @runtime.pull_subscriber(
        t.APPROVAL_TIMERS_DURABLE,
        concurrency=32,
        decode=lambda data: decode(ApprovalExpiryDue, data, settings.max_message_bytes),
    )
    async def on_expiry(timer: ApprovalExpiryDue) -> None:
        with bound_context(run_id=timer.run_id, approval_id=timer.body.approval_id):
            try:
                await service.expire(timer.body.approval_id)
            except TooEarly as exc:
                raise Redeliver(max(exc.remaining, 0.0) + 0.05, "expiry timer fired before the expiry") from exc

    async def on_startup() -> None:
        await db.migrate_in_child()
        log.info("approval_store_ready", db=db.describe())

    async def after_startup() -> None:
        if await asyncio.to_thread(store.is_empty):
            # A new or lost store: the stream has every request and decision, so start from it.
            found = await read_approval_events(event_store(), settings.max_message_bytes)
            if found:
                applied = await service.rebuild(found, wipe=False)
                log.info("approval_store_rebuilt", events=len(found), applied=applied)
        rescheduled = await service.reschedule_pending()
        log.info("approval_timers_rescheduled", pending=rescheduled)
        tasks.append(asyncio.create_task(service.run_outbox(stop)))
        await _serve_http()

    async def _serve_http() -> None:
        app = create_app(
            service,
            cookie_secure=settings.approval_cookie_secure,
            session_hours=settings.approval_session_hours,
            throttle=GuessThrottle(settings.approval_max_failed_logins, settings.approval_guess_window_seconds),
        )
        runtime.http, task = await start_embedded(
            app, settings.approval_http_host, settings.approval_http_port, name="approval", graceful_shutdown_seconds=5
        )
        tasks.append(task)
        log.info("approval_http_listening", url=f"http://{settings.approval_http_host}:{settings.approval_http_port}")

    async def on_shutdown() -> None:
        stop.set()
        if runtime.http is not None:
            runtime.http.should_exit = True
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        db.dispose()

    runtime.app.on_startup(on_startup)
    runtime.app.after_startup(after_startup)
    runtime.app.on_shutdown(on_shutdown)
    return runtime
