"""The router's use cases: what it does with a trigger, an attempt outcome and a timer.

No NATS here beyond the ports it is given (repository, publisher, view store), so it is testable with
fakes and the same code runs behind FastStream in production.
"""

from collections.abc import Awaitable, Callable, Sequence

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from keel_contracts.codec import ContractViolation
from keel_contracts.commands import CancelRun, HumanInput, TriggerRun
from keel_contracts.envelope import Message, run_id_for
from keel_contracts.runs import RunStatus, RunView
from keel_contracts.timers import TimerFired
from keel_router.aggregate import RunState
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.metrics import RETRIES_SCHEDULED, RUNS_FINISHED, RUNS_STARTED, TRANSITIONS, TRIGGERS_JOINED
from keel_router.runs import RunRepository
from keel_router.workflow.models import Workflow
from keel_shared.logging import bound_context, get_logger

log = get_logger(__name__)


class Router:
    def __init__(
        self,
        catalog: WorkflowCatalog,
        runs: RunRepository,
        engine: Engine,
        publish: Callable[[Effect], Awaitable[None]],
        put_view: Callable[[RunView], Awaitable[None]],
        drop_pending_work: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._catalog = catalog
        self._runs = runs
        self._engine = engine
        self._publish = publish
        self._put_view = put_view
        # After a cancel: withdraw the run's execute commands no executor has started, so no new write
        # begins (one already running finishes and its outcome is recorded).
        self._drop_pending_work = drop_pending_work

    def _workflow(self, name: str) -> Workflow:
        wf = self._catalog.get(name)
        if wf is None:
            raise ContractViolation("unknown_workflow", f"no workflow named {name!r} (known: {self._catalog.names()})")
        return wf

    async def on_trigger(self, trigger: TriggerRun, redelivered: bool) -> RunState | None:
        workflow = self._workflow(trigger.workflow)
        expected = run_id_for(trigger.tenant, trigger.workflow, trigger.body.intent_key)
        if trigger.run_id != expected:
            raise ContractViolation(
                "invalid", f"run_id {trigger.run_id!r} does not belong to this intent (expected {expected!r})"
            )
        if workflow.input_schema is not None:
            problems = sorted(
                Draft202012Validator(workflow.input_schema).iter_errors(trigger.body.input),
                key=lambda e: e.path,
            )
            if problems:
                detail = "; ".join(f"{'/'.join(map(str, p.path)) or '(input)'}: {p.message}" for p in problems[:5])
                raise ContractViolation("invalid_input", f"input does not match workflow {workflow.name}: {detail}")

        def decide(state: RunState | None) -> Sequence[Message]:
            return self._engine.on_trigger(state, trigger, workflow)

        return await self._handle(workflow.name, trigger.run_id, decide, redelivered)

    async def on_run_changed(self, workflow_name: str, run_id: str, redelivered: bool) -> RunState | None:
        """Another service recorded something on the run (an attempt outcome): decide what follows."""
        workflow = self._workflow(workflow_name)

        def decide(state: RunState | None) -> Sequence[Message]:
            return [] if state is None else self._engine.advance(state, workflow, None)

        return await self._handle(workflow_name, run_id, decide, redelivered)

    async def on_timer(self, timer: TimerFired, redelivered: bool) -> RunState | None:
        workflow = self._workflow(timer.workflow)

        def decide(state: RunState | None) -> Sequence[Message]:
            return [] if state is None else self._engine.on_timer(state, timer, workflow)

        return await self._handle(workflow.name, timer.run_id, decide, redelivered)

    async def on_command(self, cmd: HumanInput | CancelRun, redelivered: bool) -> RunState | None:
        """Human input for a parked run, or its cancellation."""
        workflow = self._workflow(cmd.workflow)

        def decide(state: RunState | None) -> Sequence[Message]:
            if state is None:
                raise ContractViolation("unknown_run", f"no run {cmd.run_id} of workflow {cmd.workflow}")
            if isinstance(cmd, CancelRun):
                return self._engine.on_cancel(state, cmd)
            return self._engine.on_human_input(state, cmd, workflow)

        state = await self._handle(workflow.name, cmd.run_id, decide, redelivered)
        cancelled = isinstance(cmd, CancelRun) and state is not None and state.status is RunStatus.CANCELLED
        if cancelled and state is not None and self._drop_pending_work is not None:
            await self._drop_pending_work(state.run_id)
        return state

    async def _handle(
        self,
        workflow: str,
        run_id: str,
        decide: Callable[[RunState | None], Sequence[Message]],
        redelivered: bool,
    ) -> RunState | None:
        with bound_context(run_id=run_id, workflow=workflow):
            async with self._runs.lock(run_id):
                done = await self._runs.transact(workflow, run_id, decide)
                state = done.after
                if state is None:
                    return None
                if done.appended or done.conflicted or redelivered:
                    # Publishing effects is idempotent, so do it whenever they may be missing: after a
                    # crash between storing a transition and publishing (the message comes back), and
                    # after a conflict, which may hide our own stored-but-unacknowledged append.
                    for effect in self._engine.effects(state):
                        await self._publish(effect)
                    await self._put_view(state.view())
                if done.appended:
                    self._observe(done.before, state)
                return state

    @staticmethod
    def _observe(before: RunState | None, after: RunState) -> None:
        wf = after.workflow
        if before is None:
            RUNS_STARTED.labels(wf).inc()
        elif len(after.triggers) > len(before.triggers):
            TRIGGERS_JOINED.labels(wf).inc()
        if before is None or before.status != after.status:
            TRANSITIONS.labels(wf, str(after.status)).inc()
            if after.status.terminal:
                RUNS_FINISHED.labels(wf, str(after.status)).inc()
            log.info("run_state", status=str(after.status), reason=after.reason[:300])
        if after.pending_retry is not None and (before is None or before.pending_retry != after.pending_retry):
            last = after.last_attempt
            RETRIES_SCHEDULED.labels(wf, str(last.error_class if last else "")).inc()
