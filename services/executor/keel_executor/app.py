"""The executor service's NATS wiring: one shared durable pull consumer of `step_scheduled` events, N
processes."""

import asyncio
import contextlib
from typing import Annotated

from nats.aio.msg import Msg
from pydantic import Field, TypeAdapter

from keel_contracts import subjects as s
from keel_contracts.attempts import execute_step_for
from keel_contracts.codec import ContractViolation, decode_event, decode_with
from keel_contracts.events import RunStarted, StepFailed, StepScheduled, StepSucceeded, scheduled_step
from keel_executor.claims import ClaimLost, KvClaims
from keel_executor.execution import Executor
from keel_executor.metrics import ATTEMPTS, TOOL_SECONDS
from keel_executor.outcomes import StreamOutcomes
from keel_executor.tools.registry import ToolRegistry
from keel_shared import decisions, schedules
from keel_shared.consuming import Delivery, Redeliver, current_message, redelivered
from keel_shared.eventstore import EventStore
from keel_shared.logging import bound_context, get_logger
from keel_shared.metrics import UNVERIFIED_SCHEDULES
from keel_shared.schedules import schedule_problem
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings

log = get_logger(__name__)

#: What the executors' durable delivers (`keel_contracts.topology`).
Work = Annotated[StepScheduled | RunStarted, Field(discriminator="type")]
_WORK: TypeAdapter[StepScheduled | RunStarted] = TypeAdapter(Work)


async def _heartbeat(msg: Delivery, every: float) -> None:
    # Keeps the command ours while the tool runs longer than ack_wait; stops when the tool does, so
    # a crashed process lets the server hand the command to another executor.
    while True:
        await asyncio.sleep(every)
        await msg.in_progress()


def build(settings: KeelSettings, tools: ToolRegistry | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(s.EXECUTOR, settings, graceful_timeout=max(30.0, settings.default_step_timeout))
    registry = tools or ToolRegistry.from_entry_points()
    executor: Executor | None = None
    # The keys whose signed grants may unlock a write (decision 026); read again on an unknown key id.
    keyring = decisions.KEYS.keyring(settings)
    # Only the router's signed schedules of writes are sent (decision 026).
    router_keys = schedules.KEYS.keyring(settings)
    for keys, what in ((schedules.KEYS, "every write will be refused"), (decisions.KEYS, "no grant will count")):
        if not keys.keyring_path(settings).exists():
            log.warning("keyring_missing", keyring=str(keys.keyring_path(settings)), consequence=what)

    async def claims() -> KvClaims:
        return KvClaims(await runtime.kv(s.CLAIMS_BUCKET))

    async def get_executor() -> Executor:
        nonlocal executor
        if executor is None:
            store = EventStore(runtime.nc, runtime.js, s.EXECUTOR, timeout=settings.publish_timeout)
            executor = Executor(
                registry,
                await claims(),
                StreamOutcomes(store),
                runtime.instance_id,
                str(settings.data_dir),
                keyring,
            )
        return executor

    async def history(raw: Msg) -> str | None:
        # An attempt about to be dead-lettered: its claim says who held it, when, and how tries ended.
        try:
            scheduled = scheduled_step(decode_event(raw.data, settings.max_message_bytes))
        except ContractViolation:
            return None
        return None if scheduled is None else await (await claims()).describe(scheduled.body.command_id)

    runtime.dead_letter_history = history

    @runtime.pull_subscriber(
        s.EXECUTOR_DURABLE,
        concurrency=settings.executor_concurrency,
        decode=lambda data: decode_with(_WORK, data, settings.max_message_bytes),
    )
    async def on_scheduled(event: Work) -> None:
        scheduled = scheduled_step(event)
        if scheduled is None:
            return  # a run whose first step is not a tool step: nothing to run here
        cmd = execute_step_for(scheduled)
        distrust = schedule_problem(router_keys, scheduled)
        if distrust is not None:
            UNVERIFIED_SCHEDULES.labels(s.EXECUTOR).inc()
            log.warning("unverified_schedule", run_id=cmd.run_id, step_id=cmd.step_id, detail=distrust)
        with bound_context(run_id=cmd.run_id, step_id=cmd.step_id, attempt=cmd.attempt, tool=cmd.body.tool):
            msg = current_message()
            beat = asyncio.create_task(_heartbeat(msg, settings.heartbeat_seconds))
            try:
                result = await (await get_executor()).execute(
                    cmd, msg.stream_seq, first_delivery=not redelivered(), distrust=distrust
                )
            except ClaimLost as exc:
                raise Redeliver(settings.ack_wait_seconds, str(exc)) from exc
            except Exception as exc:
                # Not a tool failure (those are outcomes) but ours: the broker, the store. The guard
                # redelivers the command; the claim keeps what went wrong for its dead letter, if any.
                with contextlib.suppress(Exception):
                    await (await claims()).note_error(
                        cmd.dedupe_key, runtime.instance_id, f"{type(exc).__name__}: {exc}"
                    )
                raise
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
            outcome = result.outcome
            if isinstance(outcome, StepSucceeded | StepFailed):
                error_class = outcome.body.error_class if isinstance(outcome, StepFailed) else ""
                ATTEMPTS.labels(cmd.body.tool, outcome.type.removeprefix("step_"), str(error_class)).inc()
                elapsed = (outcome.body.finished_at - outcome.body.started_at).total_seconds()
                TOOL_SECONDS.labels(cmd.body.tool).observe(elapsed)

    return runtime
