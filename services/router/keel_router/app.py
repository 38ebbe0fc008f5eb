"""The router service's NATS wiring: triggers, attempt outcomes and timers in; events, commands,
timers and the run-state view out."""

from datetime import UTC, datetime

from faststream.nats import NatsMessage

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.codec import decode_event, encode
from keel_contracts.commands import TriggerRun
from keel_contracts.runs import RunView, view_key
from keel_contracts.timers import TimerFired
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.router import Router
from keel_router.runs import RunRepository
from keel_shared.eventstore import EventStore
from keel_shared.publishing import publish_with_retry
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings


def _redelivered(msg: NatsMessage) -> bool:
    return (msg.raw_message.metadata.num_delivered or 1) > 1


def build(settings: KeelSettings, catalog: WorkflowCatalog | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(s.ROUTER, settings)
    workflows = catalog or WorkflowCatalog(settings.workflows_dir)
    workflows.scan()
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
            router = Router(workflows, RunRepository(store), Engine(lambda: datetime.now(UTC)), publish, put_view)
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
        description="An attempt finished: decide what the run does next",
    )
    async def on_outcome(msg: NatsMessage) -> None:
        event = decode_event(msg.raw_message.data, settings.max_message_bytes)
        await get_router().on_run_changed(event.workflow, event.run_id, _redelivered(msg))

    @runtime.pull_subscriber(
        t.TIMERS_FIRE_ALL,
        stream=t.TIMERS_STREAM,
        durable=t.ROUTER_TIMERS_DURABLE,
        batch_size=settings.router_concurrency,
        description="A durable timer fired: retry a step whose backoff has passed",
    )
    async def on_timer(timer: TimerFired, msg: NatsMessage) -> None:
        await get_router().on_timer(timer, _redelivered(msg))

    return runtime
