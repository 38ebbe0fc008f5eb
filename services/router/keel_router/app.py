"""The router service's NATS wiring: triggers, attempt outcomes and timers in; events, commands,
timers and the run-state view out."""

from datetime import UTC, datetime

from pydantic import TypeAdapter

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.codec import decode, decode_event, decode_with, encode
from keel_contracts.commands import CancelRun, HumanInput, RouterCommand, TriggerRun
from keel_contracts.events import RunEvent
from keel_contracts.runs import RunView, view_key
from keel_contracts.timers import TimerFired
from keel_router.admission import count_runs_in_flight
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import Delivered, RunRepository, checked_follows
from keel_router.views import ViewWriter
from keel_router.workflow.policy import Policy, load_policy
from keel_shared import decisions, schedules
from keel_shared.consuming import current_message, redelivered
from keel_shared.eventstore import EventStore
from keel_shared.logging import get_logger
from keel_shared.publishing import publish_with_retry
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings
from keel_shared.trust import check_decision

log = get_logger(__name__)

_COMMANDS: TypeAdapter[HumanInput | CancelRun] = TypeAdapter(RouterCommand)


def build(settings: KeelSettings, catalog: WorkflowCatalog | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(s.ROUTER, settings)
    workflows = catalog or WorkflowCatalog(settings.workflows_dir)
    workflows.scan()
    # A broken policy file stops the router at start: running without the approvals it demands is worse.
    policy = load_policy(settings.policy_file) if settings.policy_file else Policy()
    router: Router | None = None
    in_flight = count_runs_in_flight(runtime)
    # The keys whose signed decisions may unlock a write (decision 026); read again on an unknown key id.
    keyring = decisions.KEYS.keyring(settings)
    if not decisions.KEYS.keyring_path(settings).exists():
        log.warning(
            "keyring_missing", keyring=str(decisions.KEYS.keyring_path(settings)), consequence="no grant will count"
        )
    # It signs every write it schedules; executors send only those (decision 026).
    schedule_signer = schedules.KEYS.ensure(settings)

    async def publish(effect: Effect) -> None:
        headers = {"Nats-Msg-Id": effect.dedupe_key, **(effect.headers or {})}
        await publish_with_retry(
            runtime.js,
            effect.subject,
            encode(effect.message),
            headers,
            timeout=settings.publish_timeout,
            budget=settings.publish_retry_budget,
        )

    async def put_view(view: RunView) -> None:
        kv = await runtime.kv(s.RUNS_BUCKET)
        await kv.put(view_key(view.run_id), encode(view))

    views = ViewWriter(put_view)
    runtime.app.on_shutdown(views.flush)

    def get_router() -> Router:
        nonlocal router
        if router is None:
            store = EventStore(
                runtime.nc,
                runtime.js,
                s.ROUTER,
                timeout=settings.publish_timeout,
                budget=settings.publish_retry_budget,
            )
            engine = Engine(
                lambda: datetime.now(UTC), policy=policy, max_approval_payload_bytes=settings.max_approval_payload_bytes
            )
            router = Router(
                workflows,
                RunRepository(store, keyring),
                engine,
                publish,
                views.write,
                runs_in_flight=in_flight,
                schedule_signer=schedule_signer,
                max_message_bytes=settings.max_message_bytes,
            )
        return router

    max_bytes = settings.max_message_bytes

    @runtime.pull_subscriber(
        s.ROUTER_TRIGGERS_DURABLE,
        concurrency=settings.router_concurrency,
        decode=lambda data: decode(TriggerRun, data, max_bytes),
    )
    async def on_trigger(trigger: TriggerRun) -> None:
        await get_router().on_trigger(trigger, redelivered())

    @runtime.pull_subscriber(
        s.ROUTER_EVENTS_DURABLE,
        concurrency=settings.router_concurrency,
        decode=lambda data: decode_event(data, max_bytes),
    )
    async def on_outcome(event: RunEvent) -> None:
        msg = current_message()
        subject = msg.raw_message.subject
        # The guard checked the emitter; a decision must also carry a signature the keyring trusts.
        check_decision(s.ROUTER, keyring, subject, event)
        follows = checked_follows(msg.raw_message.headers, event.workflow, event.run_id)
        delivered = Delivered(msg.stream_seq, event, follows)
        await get_router().on_run_changed(event.workflow, event.run_id, redelivered(), delivered=delivered)

    @runtime.pull_subscriber(
        t.ROUTER_TIMERS_DURABLE,
        concurrency=settings.router_concurrency,
        decode=lambda data: decode(TimerFired, data, max_bytes),
    )
    async def on_timer(timer: TimerFired) -> None:
        await get_router().on_timer(timer, redelivered())

    @runtime.pull_subscriber(
        s.ROUTER_COMMANDS_DURABLE,
        concurrency=settings.router_concurrency,
        decode=lambda data: decode_with(_COMMANDS, data, max_bytes),
    )
    async def on_command(command: RouterCommand) -> None:
        await get_router().on_command(command, redelivered())

    return runtime
