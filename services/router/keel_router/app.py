"""The router service's NATS wiring: triggers, attempt outcomes and timers in; events, commands,
timers and the run-state view out."""

from datetime import UTC, datetime

from faststream.nats import NatsMessage

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.codec import decode_event, encode
from keel_contracts.commands import RouterCommand, TriggerRun
from keel_contracts.runs import RunView, view_key
from keel_contracts.timers import TimerFired
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import RunRepository
from keel_router.workflow.policy import Policy, load_policy
from keel_shared.eventstore import EventStore
from keel_shared.logging import get_logger
from keel_shared.publishing import publish_with_retry
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings

log = get_logger(__name__)


def _redelivered(msg: NatsMessage) -> bool:
    return (msg.raw_message.metadata.num_delivered or 1) > 1


def build(settings: KeelSettings, catalog: WorkflowCatalog | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(s.ROUTER, settings)
    workflows = catalog or WorkflowCatalog(settings.workflows_dir)
    workflows.scan()
    # A broken policy file stops the router at start: running without the approvals it demands is worse.
    policy = load_policy(settings.policy_file) if settings.policy_file else Policy()
    router: Router | None = None

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

    async def drop_pending_work(run_id: str) -> None:
        try:
            await runtime.js.purge_stream(s.COMMANDS_STREAM, subject=s.execute_subject(run_id))
        except Exception as exc:  # best effort: the run is cancelled whatever happens here
            log.warning("purge_after_cancel_failed", run_id=run_id, error=str(exc))

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
            engine = Engine(lambda: datetime.now(UTC), policy=policy)
            router = Router(workflows, RunRepository(store), engine, publish, put_view, drop_pending_work)
        return router

    @runtime.pull_subscriber(
        s.TRIGGERS_ALL,
        stream=s.COMMANDS_STREAM,
        durable=s.ROUTER_TRIGGERS_DURABLE,
        batch_size=settings.router_concurrency,
        description="Start a run for an intent, or join the run the intent already has",
    )
    async def on_trigger(trigger: TriggerRun, msg: NatsMessage) -> None:
        await get_router().on_trigger(trigger, _redelivered(msg))

    @runtime.pull_subscriber(
        s.emitter_filter(s.EXECUTOR),
        stream=s.EVENTS_STREAM,
        durable=s.ROUTER_EVENTS_DURABLE,
        batch_size=settings.router_concurrency,
        description="An attempt finished, or an approval was decided: decide what the run does next",
    )
    async def on_outcome(msg: NatsMessage) -> None:
        event = decode_event(msg.raw_message.data, settings.max_message_bytes)
        await get_router().on_run_changed(event.workflow, event.run_id, _redelivered(msg))

    @runtime.pull_subscriber(
        t.ROUTER_TIMERS_FIRE,
        stream=t.TIMERS_STREAM,
        durable=t.ROUTER_TIMERS_DURABLE,
        batch_size=settings.router_concurrency,
        description="A durable timer fired: a retry's backoff passed, a wait ended, a human step's deadline came",
    )
    async def on_timer(timer: TimerFired, msg: NatsMessage) -> None:
        await get_router().on_timer(timer, _redelivered(msg))

    @runtime.pull_subscriber(
        s.ROUTER_COMMANDS_ALL,
        stream=s.COMMANDS_STREAM,
        durable=s.ROUTER_COMMANDS_DURABLE,
        batch_size=settings.router_concurrency,
        description="Human input for a parked run (`keel run input`), or its cancellation (`keel run cancel`)",
    )
    async def on_command(command: RouterCommand, msg: NatsMessage) -> None:
        await get_router().on_command(command, _redelivered(msg))

    return runtime
