"""Building the router's events: envelopes, run data as templates see it, and the events every step
kind shares (route, complete, fail). Pure: the clock is injected."""

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RouteDecided,
    RouteDecidedBody,
    RunCompleted,
    RunCompletedBody,
    RunFailed,
    RunFailedBody,
)
from keel_router.aggregate import RunState
from keel_router.workflow.policy import json_size
from keel_router.workflow.templating import make_context, set_path

RouteKind = Literal["choice", "catch", "decide", "approval", "human", "wait"]

#: Run data larger than this is left out of what a human or an approver is shown inline (it stays in the
#: run's events, and `keel run show` has all of it).
MAX_CONTEXT_BYTES = 64 * 1024


class Emitter:
    def __init__(self, clock: Callable[[], datetime], actor: str = s.ROUTER) -> None:
        self.clock = clock
        self.actor = actor

    def env(self, state: RunState, dedupe_key: str, causation_id: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": state.run_id,
            "workflow": state.workflow,
            "tenant": state.tenant,
            "correlation_id": state.correlation_id,
            "causation_id": causation_id,
            "actor": self.actor,
            "dedupe_key": dedupe_key,
            "occurred_at": self.clock(),
            **extra,
        }

    def route(
        self,
        state: RunState,
        step_id: str,
        kind: RouteKind,
        to_step: str | None,
        why: str,
        causation_id: str | None,
        writes: dict[str, JsonValue] | None = None,
    ) -> RouteDecided:
        """A routing decision recorded with its reason; its dedupe key is unique per run position."""
        return RouteDecided(
            **self.env(state, f"{state.run_id}:{step_id}:{state.last_seq}:{kind}", causation_id, step_id=step_id),
            body=RouteDecidedBody(kind=kind, to_step=to_step, why=why[:4096], writes=writes or {}),
        )

    def complete(self, state: RunState, output: dict[str, JsonValue], why: str, causation_id: str | None) -> Message:
        return RunCompleted(
            **self.env(state, f"{state.run_id}:completed", causation_id),
            body=RunCompletedBody(output=output, reason=why[:1024]),
        )

    def fail(self, state: RunState, why: str, error_class: ErrorClass | None, step_id: str | None = None) -> Message:
        return RunFailed(
            **self.env(state, f"{state.run_id}:failed", None),
            body=RunFailedBody(reason=why[:1024], error_class=error_class, failed_step=step_id),
        )


def run_context(state: RunState) -> dict[str, Any]:
    """The run data templates and conditions see: trigger input, results, errors, the last human input."""
    data: dict[str, Any] = {"steps": {}, "errors": {}}
    for path, value in state.data_writes:
        set_path(data, path, value)
    return make_context(
        trigger_input=state.input,
        steps=data["steps"],
        errors=data["errors"],
        run_id=state.run_id,
        workflow=state.workflow,
        intent_key=state.intent_key,
        human=state.human_input,
    )


def shown_context(ctx: dict[str, Any], limit: int = MAX_CONTEXT_BYTES) -> dict[str, JsonValue]:
    """Run data to show a person inline, or a note saying why it is left out."""
    size = json_size(ctx)
    if size > limit:
        return {"omitted": f"run data is {size} bytes (inline limit {limit}); see `keel run show`"}
    return ctx
