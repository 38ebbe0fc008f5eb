"""Human-readable output of the CLI (the `--json` output is the stable, documented form)."""

from typing import Any

from keel_cli.client import TimelineEntry
from keel_contracts.runs import RunView


def _summary(entry: TimelineEntry) -> str:
    event = entry.event
    if entry.rejected is not None:
        return f"REJECTED, not from its rightful emitter: {entry.rejected}"
    if event is None:
        return "(an event type this version of Keel cannot read)"
    body: Any = getattr(event, "body", None)
    match entry.type:
        case "run_started":
            return f"intent={body.intent_key} source={body.source} input={_short(body.input)}"
        case "trigger_joined":
            return f"another trigger for intent {body.intent_key} joined (source={body.source})"
        case "step_scheduled":
            return f"{body.tool} attempt {event.attempt}: {body.reason}"
        case "step_succeeded":
            return f"{body.tool} -> {_short(body.output)} ({_ms(body)} ms)"
        case "step_failed":
            return f"{body.tool} [{body.error_class}] {body.message[:160]}"
        case "run_completed" | "run_failed":
            return str(body.reason)
    text = getattr(body, "reason", None) or getattr(body, "message", None)
    return str(text) if text else _short(body.model_dump(mode="json") if body is not None else {})


def _ms(body: Any) -> int:
    return int((body.finished_at - body.started_at).total_seconds() * 1000)


def _short(value: Any, limit: int = 100) -> str:
    import json

    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def timeline_line(entry: TimelineEntry) -> str:
    event = entry.event
    when = event.occurred_at.strftime("%H:%M:%S.%f")[:-3] if event else "--:--:--.---"
    step = (event.step_id or "") if event else ""
    return f"{entry.seq:>6}  {when}  {entry.emitter:<8} {entry.type:<15} {step:<14} {_summary(entry)}"


def run_line(view: RunView) -> str:
    step = view.current_step or "-"
    return (
        f"{view.run_id}  {view.workflow:<14} {view.status:<15} step={step:<12} "
        f"steps={view.steps_done} attempts={view.attempts} updated={view.updated_at:%Y-%m-%d %H:%M:%S}  {view.reason}"
    )


def run_header(view: RunView) -> list[str]:
    return [
        f"run       {view.run_id}",
        f"workflow  {view.workflow}",
        f"intent    {view.intent_key}",
        f"status    {view.status}  ({view.reason})",
        f"started   {view.started_at:%Y-%m-%d %H:%M:%S} UTC   updated {view.updated_at:%Y-%m-%d %H:%M:%S} UTC",
        f"steps     {view.steps_done} done, {view.attempts} attempts, {view.triggers} trigger(s)",
    ]
