"""The router's use cases: what it does with a trigger, an attempt outcome and a timer.

No NATS here beyond the ports it is given (repository, publisher, view store), so it is testable with
fakes and the same code runs behind FastStream in production.
"""

from collections.abc import Awaitable, Callable, Sequence

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from nats.errors import Error as NatsError

from keel_contracts.codec import DEFAULT_MAX_MESSAGE_BYTES, ContractViolation, encode
from keel_contracts.commands import CancelRun, HumanInput, TriggerRun
from keel_contracts.envelope import Message, run_id_for
from keel_contracts.events import RunStarted
from keel_contracts.runs import RunView
from keel_contracts.timers import TimerFired
from keel_router.admission import NotReady, RunsInFlight
from keel_router.aggregate import RunState
from keel_router.catalog import WorkflowCatalog
from keel_router.engine import Effect, Engine
from keel_router.metrics import RETRIES_SCHEDULED, RUNS_FINISHED, RUNS_STARTED, TRANSITIONS, TRIGGERS_JOINED
from keel_router.runs import Delivered, RunRepository, Transaction
from keel_router.workflow.models import Workflow
from keel_router.workflow.policy import CapHit
from keel_shared.consuming import Redeliver
from keel_shared.logging import bound_context, get_logger
from keel_shared.publishing import refused_as_too_large
from keel_shared.schedules import signed_writes
from keel_shared.signing import Signer

log = get_logger(__name__)

#: How long a trigger for a new run waits, right after a router starts, for the count of runs in flight.
ADMISSION_WAIT_SECONDS = 10.0

Decide = Callable[[RunState | None], Sequence[Message]]


class Router:
    def __init__(
        self,
        catalog: WorkflowCatalog,
        runs: RunRepository,
        engine: Engine,
        publish: Callable[[Effect], Awaitable[None]],
        put_view: Callable[[RunView, bool], Awaitable[None]],
        runs_in_flight: RunsInFlight | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        schedule_signer: Signer,
    ) -> None:
        self._catalog = catalog
        self._runs = runs
        self._engine = engine
        self._publish = publish
        self._put_view = put_view
        # None: no limit on runs in flight (KEEL_MAX_RUNS_IN_FLIGHT=0).
        self._in_flight = runs_in_flight
        self._max_message_bytes = max_message_bytes
        self._signer = schedule_signer

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

        in_flight = self._in_flight
        admitted = False

        def decide(state: RunState | None) -> Sequence[Message]:
            nonlocal admitted
            if state is None and in_flight is not None:
                # Only a new run is counted; joining the run an intent already has never is.
                in_flight.admit(trigger.tenant, trigger.run_id)
                admitted = True
            elif admitted and in_flight is not None:
                # Decided first as a new run without reading it (`probably_new`), but it exists: a join.
                in_flight.withdraw(trigger.tenant, trigger.run_id)
                admitted = False
            if state is None:
                # A new run's `run_started` is stored on its own and what follows is decided on the started
                # run below: two checked single appends cost the server a fraction of one atomic batch.
                return [self._engine.start(trigger, workflow)]
            return self._engine.on_trigger(state, trigger, workflow)

        # Then move the run on from its start. For a new run that is its first step; for a redelivered
        # trigger whose run was started by a process that stopped right after, the same decision again. A
        # run already under way has nothing to add here (`advance` waits for what is in flight).
        def move_on(state: RunState | None) -> Sequence[Message]:
            nonlocal admitted
            admitted = False  # the run is stored: it counts whatever happens next
            return [] if state is None else self._engine.advance(state, workflow, trigger.id)

        try:
            try:
                return await self._handle(
                    workflow.name, trigger.run_id, decide, redelivered, probably_new=True, then=move_on
                )
            except NotReady:
                # Right after a start the count is still being read: wait for it rather than guess.
                assert in_flight is not None
                if not await in_flight.wait_ready(ADMISSION_WAIT_SECONDS):
                    raise Redeliver(1.0, "runs in flight not counted yet") from None
                return await self._handle(
                    workflow.name, trigger.run_id, decide, redelivered, probably_new=True, then=move_on
                )
        except BaseException:
            if admitted and in_flight is not None:
                in_flight.withdraw(trigger.tenant, trigger.run_id)
            raise

    async def on_run_changed(
        self, workflow_name: str, run_id: str, redelivered: bool, delivered: Delivered | None = None
    ) -> RunState | None:
        """Another service recorded something on the run (an attempt outcome): decide what follows.
        `delivered` is that record and its stream sequence, when the caller has them."""
        workflow = self._workflow(workflow_name)

        def decide(state: RunState | None) -> Sequence[Message]:
            return [] if state is None else self._engine.advance(state, workflow, None)

        return await self._handle(workflow_name, run_id, decide, redelivered, delivered)

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

        # A cancelled run's scheduled writes that no executor has started never start: the executor
        # looks for the run's cancellation right before it sends a write (decision 023).
        return await self._handle(workflow.name, cmd.run_id, decide, redelivered)

    async def _handle(
        self,
        workflow: str,
        run_id: str,
        decide: Callable[[RunState | None], Sequence[Message]],
        redelivered: bool,
        delivered: Delivered | None = None,
        probably_new: bool = False,
        then: Decide | None = None,
    ) -> RunState | None:
        """Decide and store one transition of the run; with `then`, decide and store a second one on the
        state the first left (its own append, under the same lock), and publish and write the view once
        for both."""
        with bound_context(run_id=run_id, workflow=workflow):
            async with self._runs.lock(run_id):
                done = await self._transact(workflow, run_id, decide, delivered, probably_new)
                if then is not None and done.after is not None:
                    follow = await self._transact(workflow, run_id, then, None, trust_cache=True)
                    done = Transaction(done.before, follow.after, done.conflicted or follow.conflicted)
                state = done.after
                if state is None:
                    return None
                if done.appended or done.conflicted or redelivered:
                    # Publishing effects is idempotent, so do it whenever they may be missing: after a
                    # crash between storing a transition and publishing (the message comes back), and
                    # after a conflict, which may hide our own stored-but-unacknowledged append.
                    for effect in self._engine.effects(state):
                        await self._publish(effect)
                    # Written at once when the run appears, changes status, or may have missed a write
                    # (redelivered, conflicted); progress within a status may be coalesced (views.py).
                    before = done.before
                    urgent = before is None or before.status != state.status or not done.appended
                    await self._put_view(state.view(), urgent)
                if done.appended:
                    self._observe(done.before, state)
                return state

    async def _transact(
        self,
        workflow: str,
        run_id: str,
        chosen: Decide,
        delivered: Delivered | None,
        probably_new: bool = False,
        trust_cache: bool = False,
    ) -> Transaction:
        def decide(state: RunState | None) -> Sequence[Message]:
            # Every transition that ends a run also withdraws the approvals it still waits for, and every
            # write it schedules is signed: executors send no other (decision 026).
            return signed_writes(self._signer, self._engine.with_withdrawals(state, chosen(state)))

        try:
            return await self._runs.transact(workflow, run_id, decide, delivered, probably_new, trust_cache)
        except NatsError as exc:
            if not refused_as_too_large(exc):
                raise
        # The stream refuses an event this decision needs, so retrying can never succeed: the run is
        # blocked with the reason instead of its message failing until it is dead-lettered. A start with
        # its first step falls back to the start alone, and only if that is refused too is the trigger.
        instead = self._too_large_to_store(decide)
        try:
            return await self._runs.transact(workflow, run_id, instead)
        except NatsError as exc:
            if not refused_as_too_large(exc):
                raise
        return await self._runs.transact(workflow, run_id, self._too_large_to_store(instead))

    def _too_large_to_store(self, decide: Decide) -> Decide:
        """What to store instead of a decision the event stream refused as too large."""
        limit = self._max_message_bytes

        def instead(state: RunState | None) -> Sequence[Message]:
            events = list(decide(state))  # decisions are pure: the same one again, to say what did not fit
            if not events or (state is not None and state.terminal):
                return []
            if state is None and len(events) == 1 and isinstance(events[0], RunStarted) and events[0].body.first_step:
                # The start carried its first step and the two did not fit together: start the run alone.
                # Its first step is then decided on its own (`then`), and refused the same way, which
                # blocks the run with the reason like any other step too large to store.
                return [events[0].with_first_step(None)]
            size, largest = max(((len(encode(e)), e) for e in events), key=lambda pair: pair[0])
            what = largest.type + (f" of step {largest.step_id}" if largest.step_id else "")
            why = (
                f"limit max_message_bytes exceeded: {what} is {size} bytes and the event stream refused it "
                f"(KEEL_MAX_MESSAGE_BYTES is {limit})"
            )
            if state is None:
                raise ContractViolation("too_large", f"{why}; no run started")
            hit = CapHit("max_message_bytes", limit, size, why)
            return [self._engine.blocked(state, hit, "not storing it", largest.step_id, events[0].causation_id)]

        return instead

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
