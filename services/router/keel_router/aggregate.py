"""A run as an event-sourced aggregate: its state is the fold of its events, nothing more.

`apply` is pure and total: it accepts events in stream order, ignores a repeated report of something it
already knows (an outcome recorded twice after a crash), and never raises on an event a newer Keel
wrote that this one does not understand. Rebuilding a run after a restart is `fold(read(run))`.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import JsonValue

from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalWithdrawn,
    DecisionProof,
    proof_of,
)
from keel_contracts.commands import VerifySpec, execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    HumanInputReceived,
    HumanInputRejected,
    HumanInputRequested,
    RetryScheduled,
    RouteDecided,
    RunBlocked,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepFailed,
    StepScheduled,
    StepSucceeded,
    TriggerJoined,
    WaitStarted,
)
from keel_contracts.runs import RunStatus, RunView


@dataclass(frozen=True)
class Attempt:
    step_id: str
    attempt: int
    command_id: str
    idempotency_key: str
    tool: str
    input: dict[str, JsonValue]
    timeout_seconds: float
    result_path: str
    # How many times the run has entered this step (a choice can loop back): attempts of different
    # visits are different attempts even when their numbers match.
    visit: int = 1
    side_effect: str = "read"
    # The verify call rendered for this attempt, passed to the executor with the command.
    verify: VerifySpec | None = None
    # Which retrier of the step asked for this attempt (None for a first attempt).
    retrier_index: int | None = None
    outcome: str | None = None  # None while running, then "succeeded" or "failed"
    error_class: ErrorClass | None = None
    error: str | None = None
    output: dict[str, JsonValue] | None = None
    # The system of record's Retry-After on a failed attempt: the retry waits at least this long.
    retry_after_seconds: float | None = None
    # For a gated write: the approvals it consumed and the payload hash they bind (retries reuse them).
    approval_ids: tuple[str, ...] = ()
    approved_payload_hash: str | None = None
    # The signed grants behind them, passed on to the executor, which verifies them before it writes.
    grants: tuple[DecisionProof, ...] = ()


@dataclass(frozen=True)
class PendingRetry:
    step_id: str
    next_attempt: int
    retrier_index: int
    due_at: datetime


@dataclass(frozen=True)
class Approval:
    """One approval request of the run and, once it arrives, its decision."""

    approval_id: str
    step_id: str  # the step that asked: an approval step, or the gated write itself (a policy gate)
    approves_step: str
    role: str
    payload_hash: str
    status: str = "pending"  # pending | granted | denied | expired | withdrawn
    decided_by: tuple[str, ...] = ()
    decided_roles: tuple[str, ...] = ()
    decision_reason: str = ""
    decided_payload_hash: str | None = None
    # A grant unlocks one write: the attempt that used it names it, and it is never used again.
    consumed: bool = False
    # The approval service's signed decision (verified before it was folded: keel_router.runs).
    proof: DecisionProof | None = None


@dataclass(frozen=True)
class Park:
    """What a parked run waits for, other than an attempt or a retry timer."""

    kind: str  # approval | human | decide | wait | blocked
    step_id: str | None
    approval_id: str | None = None
    # The durable timer that ends the park (a wait, a human step's deadline), if any.
    timer_id: str | None = None
    due_at: datetime | None = None


@dataclass(frozen=True)
class Route:
    """A recorded routing decision (choice or catch) and the run data it wrote."""

    from_step: str
    kind: str
    to_step: str | None
    writes: tuple[tuple[str, JsonValue], ...] = ()


@dataclass(frozen=True)
class RunState:
    run_id: str
    workflow: str
    tenant: str
    intent_key: str
    correlation_id: str
    input: dict[str, JsonValue]
    started_at: datetime
    updated_at: datetime
    last_seq: int
    # Who triggered the run (its first trigger's actor).
    triggered_by: str = ""
    status: RunStatus = RunStatus.RUNNING
    reason: str = "started"
    triggers: frozenset[str] = frozenset()
    # Every attempt by (step_id, attempt number), in the order they were scheduled.
    attempts: tuple[Attempt, ...] = ()
    # Outputs of succeeded steps by step id: what later steps' input templates read.
    results: dict[str, dict[str, JsonValue]] = field(default_factory=dict)
    output: dict[str, JsonValue] | None = None
    error_class: ErrorClass | None = None
    pending_retry: PendingRetry | None = None
    routes: tuple[Route, ...] = ()
    # Every write into run data (step results, caught errors, fallback results), in event order:
    # replaying them rebuilds exactly what templates and conditions see.
    data_writes: tuple[tuple[str, JsonValue], ...] = ()
    park: Park | None = None
    approvals: tuple[Approval, ...] = ()
    # The last accepted human input: `${human...}` in templates.
    human_input: dict[str, JsonValue] | None = None
    # Steps the run has started (tool and decide steps, choices, approval, human and wait steps): what the
    # policy's max_steps_per_run counts. Retries are attempts, not steps.
    steps_entered: int = 0
    # Router commands (human input, cancel) already handled: a redelivered command decides nothing.
    commands: frozenset[str] = frozenset()

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def attempt(self, step_id: str | None, number: int) -> Attempt | None:
        for a in reversed(self.attempts):
            if a.step_id == step_id and a.attempt == number:
                return a
        return None

    @property
    def in_flight(self) -> Attempt | None:
        """The attempt scheduled and not yet finished, if any (sequential workflows have at most one)."""
        for a in reversed(self.attempts):
            if a.outcome is None:
                return a
        return None

    @property
    def last_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def attempts_of(self, step_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.step_id == step_id]

    def approval(self, approval_id: str | None) -> Approval | None:
        return next((a for a in self.approvals if a.approval_id == approval_id), None)

    def view(self) -> RunView:
        return RunView(
            run_id=self.run_id,
            workflow=self.workflow,
            tenant=self.tenant,
            intent_key=self.intent_key,
            status=self.status,
            reason=self.reason,
            current_step=self.in_flight.step_id if self.in_flight else (self.park.step_id if self.park else None),
            started_at=self.started_at,
            updated_at=self.updated_at,
            last_seq=self.last_seq,
            steps_done=len(self.results),
            attempts=len(self.attempts),
            triggers=len(self.triggers),
            output=self.output,
            error_class=str(self.error_class) if self.error_class else None,
        )


def _replace_attempt(state: RunState, updated: Attempt) -> tuple[Attempt, ...]:
    return tuple(updated if a.command_id == updated.command_id else a for a in state.attempts)


def _decide_approval(state: RunState, base: RunState, approval_id: str, status: str, **fields: object) -> RunState:
    """Record the first decision of a known approval; a later or unknown one changes nothing."""
    current = state.approval(approval_id)
    if current is None or current.status != "pending":
        return base
    decided = replace(current, status=status, **fields)  # type: ignore[arg-type]
    return replace(base, approvals=tuple(decided if a is current else a for a in state.approvals))


def _attempt_of_outcome(state: RunState, event: Message) -> Attempt | None:
    """The attempt an outcome reports on: the one whose execute command caused it."""
    for a in reversed(state.attempts):
        if execute_message_id(a.command_id) == event.causation_id:
            return a
    return None


def _scheduled(state: RunState, base: RunState, event: StepScheduled) -> RunState:
    """`base` (the state after its bookkeeping) with the attempt `event` schedules."""
    if any(a.command_id == event.body.command_id for a in state.attempts):
        return base
    retrier = (
        state.pending_retry.retrier_index
        if state.pending_retry
        and (state.pending_retry.step_id, state.pending_retry.next_attempt) == (event.step_id, event.attempt)
        else None
    )
    attempt = Attempt(
        step_id=event.step_id or "",
        attempt=event.attempt,
        retrier_index=retrier,
        command_id=event.body.command_id,
        idempotency_key=event.body.idempotency_key,
        tool=event.body.tool,
        input=dict(event.body.input),
        timeout_seconds=event.body.timeout_seconds,
        result_path=event.body.result_path or f"steps.{event.step_id}",
        visit=sum(1 for a in state.attempts if a.step_id == event.step_id and a.attempt == 1)
        + (1 if event.attempt == 1 else 0),
        side_effect=event.body.side_effect,
        verify=event.body.verify,
        approval_ids=tuple(event.body.approval_ids),
        approved_payload_hash=event.body.approved_payload_hash,
        grants=tuple(event.body.grants),
    )
    used = set(event.body.approval_ids)
    return replace(
        base,
        attempts=(*state.attempts, attempt),
        status=RunStatus.RUNNING,
        reason=event.body.reason,
        pending_retry=None,
        park=None,
        steps_entered=state.steps_entered + (1 if event.attempt == 1 else 0),
        approvals=tuple(replace(a, consumed=True) if a.approval_id in used else a for a in state.approvals),
    )


def apply(state: RunState | None, seq: int, event: Message) -> RunState | None:
    if state is None:
        if isinstance(event, RunStarted):
            started = RunState(
                run_id=event.run_id,
                workflow=event.workflow,
                tenant=event.tenant,
                intent_key=event.body.intent_key,
                correlation_id=event.correlation_id,
                input=dict(event.body.input),
                started_at=event.occurred_at,
                updated_at=event.occurred_at,
                last_seq=seq,
                triggers=frozenset({event.body.trigger_id}),
                triggered_by=event.body.triggered_by,
            )
            first = event.body.first_step
            # The first step shares the start's stream sequence (decision 025).
            return started if first is None else _scheduled(started, started, first)
        # A run's first event is always run_started; anything else before it cannot be folded.
        return None
    if seq <= state.last_seq:
        return state
    base = replace(state, last_seq=seq, updated_at=max(state.updated_at, event.occurred_at))
    match event:
        case TriggerJoined():
            return replace(base, triggers=state.triggers | {event.body.trigger_id})
        case StepScheduled():
            return _scheduled(state, base, event)
        case RetryScheduled():
            return replace(
                base,
                status=RunStatus.RETRYING,
                reason=event.body.reason,
                pending_retry=PendingRetry(
                    step_id=event.step_id or "",
                    next_attempt=event.body.next_attempt,
                    retrier_index=event.body.retrier_index,
                    due_at=event.body.due_at,
                ),
            )
        case RouteDecided():
            writes = tuple(event.body.writes.items())
            route = Route(event.step_id or "", event.body.kind, event.body.to_step, writes)
            # A decision on the step the run was parked at ends the park (the events entering the next
            # step follow in the same transition).
            ends_park = state.park is not None and state.park.step_id == event.step_id and event.body.kind != "catch"
            return replace(
                base,
                routes=(*state.routes, route),
                reason=event.body.why[:1024],
                data_writes=(*state.data_writes, *writes),
                park=None if ends_park else state.park,
                status=RunStatus.RUNNING if ends_park else state.status,
                steps_entered=state.steps_entered + (1 if event.body.kind == "choice" else 0),
            )
        case StepSucceeded():
            current = _attempt_of_outcome(state, event)
            if current is None or current.outcome is not None:
                return base  # an outcome for an attempt we never scheduled, or reported twice
            done = replace(current, outcome="succeeded", output=dict(event.body.output))
            return replace(
                base,
                attempts=_replace_attempt(state, done),
                results={**state.results, done.step_id: done.output or {}},
                data_writes=(*state.data_writes, (done.result_path, done.output or {})),
            )
        case StepFailed():
            current = _attempt_of_outcome(state, event)
            if current is None or current.outcome is not None:
                return base
            failed = replace(
                current,
                outcome="failed",
                error_class=event.body.error_class,
                error=event.body.message,
                retry_after_seconds=event.body.retry_after_seconds,
            )
            return replace(base, attempts=_replace_attempt(state, failed))
        case RunCompleted():
            return replace(
                base, status=RunStatus.DONE, reason=event.body.reason, output=dict(event.body.output), park=None
            )
        case RunFailed():
            return replace(
                base, status=RunStatus.FAILED, reason=event.body.reason, error_class=event.body.error_class, park=None
            )
        case RunCancelled():
            return replace(
                base,
                status=RunStatus.CANCELLED,
                reason=event.body.reason,
                park=None,
                pending_retry=None,
                commands=_with_command(state, event.causation_id),
            )
        case RunBlocked():
            return replace(
                base, status=RunStatus.BLOCKED, reason=event.body.reason, park=Park("blocked", event.step_id)
            )
        case ApprovalRequested():
            body = event.body
            approval = Approval(
                approval_id=body.approval_id,
                step_id=event.step_id or body.approves_step,
                approves_step=body.approves_step,
                role=body.roles[0],
                payload_hash=body.payload_hash,
            )
            if state.approval(body.approval_id) is not None:
                return base
            # A router-inserted gate (the write asks for itself) is not a step of its own.
            entered = 1 if event.step_id != body.approves_step else 0
            return replace(
                base,
                status=RunStatus.NEEDS_APPROVAL,
                reason=body.reason,
                approvals=(*state.approvals, approval),
                park=Park("approval", approval.step_id, approval_id=body.approval_id),
                steps_entered=state.steps_entered + entered,
            )
        case ApprovalGranted() | ApprovalDenied():
            return _decide_approval(
                state,
                base,
                event.body.approval_id,
                "granted" if isinstance(event, ApprovalGranted) else "denied",
                decided_by=tuple(event.body.decided_by),
                decided_roles=tuple(event.body.roles),
                decision_reason=event.body.reason,
                decided_payload_hash=event.body.payload_hash,
                proof=proof_of(event),
            )
        case ApprovalExpired():
            return _decide_approval(state, base, event.body.approval_id, "expired")
        case ApprovalWithdrawn():
            return _decide_approval(state, base, event.body.approval_id, "withdrawn")
        case HumanInputRequested():
            asked = event.body
            timer = f"human-{event.step_id}-{seq}" if asked.expires_at is not None else None
            return replace(
                base,
                status=RunStatus.NEEDS_HUMAN,
                reason=asked.reason,
                park=Park(asked.kind, event.step_id, timer_id=timer, due_at=asked.expires_at),
                steps_entered=state.steps_entered + (1 if asked.kind == "human" else 0),
            )
        case HumanInputReceived():
            return replace(
                base, human_input=dict(event.body.input), commands=_with_command(state, event.body.command_id)
            )
        case HumanInputRejected():
            return replace(base, commands=_with_command(state, event.body.command_id))
        case WaitStarted():
            return replace(
                base,
                status=RunStatus.WAITING,
                reason=event.body.reason,
                park=Park("wait", event.step_id, timer_id=event.body.timer_id, due_at=event.body.due_at),
                steps_entered=state.steps_entered + 1,
            )
        case _:
            return base


def _with_command(state: RunState, command_id: str | None) -> frozenset[str]:
    return state.commands | {command_id} if command_id else state.commands


def fold(events: Iterable[tuple[int, Message]], state: RunState | None = None) -> RunState | None:
    for seq, event in events:
        state = apply(state, seq, event)
    return state
