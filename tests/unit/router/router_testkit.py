"""Helpers shared by the router tests (a plain module: a conftest name would clash across test dirs).

`RunLog` plays the role of the event store: it numbers events as the stream would and folds them with the
real aggregate, so every engine test sees exactly the state the router would read back.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import JsonValue

from keel_contracts.commands import execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepFailedBody, StepSucceeded, StepSucceededBody, unpacked
from keel_router.aggregate import Attempt, RunState, apply
from keel_router.workflow import Workflow, load_workflow_text

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def workflow(yaml_text: str) -> Workflow:
    return load_workflow_text(textwrap.dedent(yaml_text), "test.yaml")


def _outcome_envelope(attempt: Attempt, state: RunState) -> dict[str, object]:
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "tenant": state.tenant,
        "step_id": attempt.step_id,
        "attempt": attempt.attempt,
        "correlation_id": state.correlation_id,
        "actor": "executor:test",
        # As the executor does: an outcome is caused by its attempt's execute command.
        "causation_id": execute_message_id(attempt.command_id),
        "dedupe_key": f"{attempt.command_id}:outcome",
        "occurred_at": T0,
    }


def succeeded(state: RunState, output: dict[str, JsonValue], attempt: Attempt | None = None) -> StepSucceeded:
    """The outcome an executor records when the attempt in flight (or `attempt`) succeeds."""
    target = attempt or state.in_flight
    assert target is not None, "no attempt in flight"
    return StepSucceeded(
        **_outcome_envelope(target, state),
        body=StepSucceededBody(tool=target.tool, output=output, started_at=T0, finished_at=T0, executor_id="test"),
    )


def failed(
    state: RunState, error_class: ErrorClass, message: str = "boom", attempt: Attempt | None = None
) -> StepFailed:
    target = attempt or state.in_flight
    assert target is not None, "no attempt in flight"
    return StepFailed(
        **_outcome_envelope(target, state),
        body=StepFailedBody(
            tool=target.tool,
            error_class=error_class,
            error_type="TestError",
            message=message,
            started_at=T0,
            finished_at=T0,
            executor_id="test",
        ),
    )


class RunLog:
    """A run's events in stream order and the state folded from them.

    `events` and what `append` returns are the facts the stored events hold (`unpacked`): a `run_started`
    that carries its first step is listed as the start and then that step's `step_scheduled`, both at the
    one sequence it was stored under. `stored` is what was stored, one entry per sequence."""

    def __init__(self) -> None:
        self.events: list[tuple[int, Message]] = []
        self.stored: list[tuple[int, Message]] = []
        self.state: RunState | None = None
        self.seq = 0

    def append(self, events: Iterable[Message]) -> list[Message]:
        out: list[Message] = []
        for event in events:
            self.seq += 1
            self.stored.append((self.seq, event))
            self.state = apply(self.state, self.seq, event)
            for fact in unpacked(event):
                self.events.append((self.seq, fact))
                out.append(fact)
        return out

    @property
    def run(self) -> RunState:
        assert self.state is not None, "the run has not started"
        return self.state

    def types(self) -> list[str]:
        return [e.type for _, e in self.events]
