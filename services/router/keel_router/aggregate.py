"""A run as an event-sourced aggregate: its state is the fold of its events, nothing more.

`apply` is pure and total: it accepts events in stream order, ignores a repeated report of something it
already knows (an outcome recorded twice after a crash), and never raises on an event a newer Keel
wrote that this one does not understand. Rebuilding a run after a restart is `fold(read(run))`.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import JsonValue

from keel_contracts.commands import execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RetryScheduled,
    RouteDecided,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepFailed,
    StepScheduled,
    StepSucceeded,
    TriggerJoined,
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
    # Which retrier of the step asked for this attempt (None for a first attempt).
    retrier_index: int | None = None
    outcome: str | None = None  # None while running, then "succeeded" or "failed"
    error_class: ErrorClass | None = None
    error: str | None = None
    output: dict[str, JsonValue] | None = None


@dataclass(frozen=True)
class PendingRetry:
    step_id: str
    next_attempt: int
    retrier_index: int
    due_at: datetime


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

    def view(self) -> RunView:
        return RunView(
            run_id=self.run_id,
            workflow=self.workflow,
            tenant=self.tenant,
            intent_key=self.intent_key,
            status=self.status,
            reason=self.reason,
            current_step=self.in_flight.step_id if self.in_flight else None,
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


def _attempt_of_outcome(state: RunState, event: Message) -> Attempt | None:
    """The attempt an outcome reports on: the one whose execute command caused it."""
    for a in reversed(state.attempts):
        if execute_message_id(a.command_id) == event.causation_id:
            return a
    return None


def apply(state: RunState | None, seq: int, event: Message) -> RunState | None:
    if state is None:
        if isinstance(event, RunStarted):
            return RunState(
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
            )
        # A run's first event is always run_started; anything else before it cannot be folded.
        return None
    if seq <= state.last_seq:
        return state
    base = replace(state, last_seq=seq, updated_at=max(state.updated_at, event.occurred_at))
    match event:
        case TriggerJoined():
            return replace(base, triggers=state.triggers | {event.body.trigger_id})
        case StepScheduled():
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
            )
            return replace(
                base,
                attempts=(*state.attempts, attempt),
                status=RunStatus.RUNNING,
                reason=event.body.reason,
                pending_retry=None,
            )
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
            return replace(
                base,
                routes=(*state.routes, route),
                reason=event.body.why[:1024],
                data_writes=(*state.data_writes, *writes),
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
            failed = replace(current, outcome="failed", error_class=event.body.error_class, error=event.body.message)
            return replace(base, attempts=_replace_attempt(state, failed))
        case RunCompleted():
            return replace(base, status=RunStatus.DONE, reason=event.body.reason, output=dict(event.body.output))
        case RunFailed():
            return replace(base, status=RunStatus.FAILED, reason=event.body.reason, error_class=event.body.error_class)
        case _:
            return base


def fold(events: Iterable[tuple[int, Message]], state: RunState | None = None) -> RunState | None:
    for seq, event in events:
        state = apply(state, seq, event)
    return state
