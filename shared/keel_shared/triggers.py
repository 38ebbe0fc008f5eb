"""Building and publishing a trigger: the one way runs start, used by the CLI, the Python client and
the webhook ingress alike."""

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.commands import TriggerRun, TriggerRunBody
from keel_contracts.envelope import Message, new_id, run_id_for
from keel_contracts.events import FINAL_STATUS_OF_EVENT, RunStarted, TriggerJoined
from keel_contracts.runs import RunStatus
from keel_shared.submitting import submit_and_await


def build_trigger(
    workflow: str,
    input: dict[str, JsonValue],
    intent_key: str | None = None,
    *,
    source: str = "cli",
    tenant: str = "default",
    actor: str | None = None,
    trigger_id: str | None = None,
) -> TriggerRun:
    """A trigger for `workflow`. Without an intent key every trigger is its own intent (a new run)."""
    tid = trigger_id or new_id()
    key = intent_key if intent_key is not None else f"trigger-{tid}"
    s.token(workflow, "workflow")
    s.token(source, "source")
    return TriggerRun(
        id=tid,
        run_id=run_id_for(tenant, workflow, key),
        workflow=workflow,
        tenant=tenant,
        correlation_id=tid,
        actor=actor or f"trigger:{source}",
        dedupe_key=f"trigger:{source}:{tid}",
        body=TriggerRunBody(intent_key=key, source=source, input=input),
    )


@dataclass(frozen=True)
class TriggerOutcome:
    """The router's answer to a trigger: the run, whether the trigger joined it and, when waited for,
    how it ended."""

    run_id: str
    joined: bool
    status: str | None = None
    output: dict[str, JsonValue] | None = None
    reason: str | None = None


async def submit_trigger(
    nc: Client, js: JetStreamContext, trig: TriggerRun, *, wait: bool = False, timeout: float = 30.0
) -> TriggerOutcome:
    """Publish a trigger and wait for the router to start or join its run (with `wait`, for the run to end,
    or to be blocked by a cap or limit: nothing moves a blocked run on by itself).

    Raises `submitting.Refused` when the trigger started no run (invalid input, unknown workflow, too
    large, too many runs in flight) and `TimeoutError` when no answer came in time.
    """
    joined: bool | None = None
    final: tuple[str, Any] | None = None  # the run may have finished before this trigger joined it

    def answer(event_type: str, event: Message | None) -> TriggerOutcome | None:
        nonlocal joined, final
        if event_type in FINAL_STATUS_OF_EVENT:
            final = (FINAL_STATUS_OF_EVENT[event_type], getattr(event, "body", None))
        elif event_type == "run_blocked":
            final = (str(RunStatus.BLOCKED), getattr(event, "body", None))
        if joined is None and isinstance(event, RunStarted | TriggerJoined) and event.causation_id == trig.id:
            joined = isinstance(event, TriggerJoined)
        if joined is None:
            return None
        if not wait:
            return TriggerOutcome(trig.run_id, joined)
        if final is None:
            return None
        status, body = final
        return TriggerOutcome(
            trig.run_id,
            joined,
            status=status,
            output=getattr(body, "output", None),
            reason=getattr(body, "reason", None),
        )

    return await submit_and_await(
        nc,
        js,
        s.trigger_subject(trig.body.source),
        trig,
        s.run_filter(trig.workflow, trig.run_id),
        answer,
        timeout=timeout,
    )
