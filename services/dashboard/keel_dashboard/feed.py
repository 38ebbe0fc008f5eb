"""Run events as the dashboard shows them: one JSON object per stored event, keyed by stream sequence.

The browser gets the envelope fields it displays plus the whole event, undecoded beyond JSON, so an
event type this dashboard does not know yet (a newer writer) still shows up in the timeline.
"""

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext

from keel_contracts import subjects as s
from keel_contracts.topology import DASHBOARD, emitter_problem
from keel_shared.follow import StartAt, follow
from keel_shared.trust import count_wrong_emitter

#: Envelope fields copied to the top of each timeline entry (the event itself travels whole in "event").
_ENVELOPE = ("occurred_at", "step_id", "attempt", "actor", "id")


#: Stream sequences are unsigned 64-bit: the feed resumes at the next one, which must still be one.
MAX_RESUME_SEQ = 2**64 - 2


class FeedError(ValueError):
    """A feed request that names no valid run or workflow (the web layer answers 400)."""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    # The browser parses what is sent with JSON.parse, which has no NaN or Infinity.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is beyond the range of a JSON number")
    return value


def timeline_entries(seq: int, subject: str, data: bytes) -> list[dict[str, Any]]:
    """The feed entries of one stored event: one per fact it holds. A `run_started` that carries its run's
    first step (decision 025) is two entries with the same sequence: the start, then the step's
    `step_scheduled` under the subject it would have had on its own (as `keel run timeline` lists it)."""
    workflow, run_id, emitter, event_type = s.parse_event_subject(subject)
    try:
        event: Any = json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses: shown as null
        event = None
    entries = [_entry(seq, subject, workflow, run_id, emitter, event_type, event)]
    body = event.get("body") if isinstance(event, dict) else None
    carried = body.get("first_step") if event_type == "run_started" and isinstance(body, dict) else None
    if isinstance(carried, dict) and carried.get("type") == "step_scheduled":
        step_subject = s.event_subject(workflow, run_id, emitter, "step_scheduled")
        entries.append(_entry(seq, step_subject, workflow, run_id, emitter, "step_scheduled", carried))
    return entries


def _entry(
    seq: int, subject: str, workflow: str, run_id: str, emitter: str, event_type: str, event: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "seq": seq,
        "subject": subject,
        "workflow": workflow,
        "run_id": run_id,
        "emitter": emitter,
        "type": event_type,
    }
    if isinstance(event, dict):
        entry.update({k: event.get(k) for k in _ENVELOPE})
    # An event stored where its type's rightful emitter never stores it is shown as rejected (decision 026).
    claimed = event.get("type") if isinstance(event, dict) else None
    problem = emitter_problem(subject, claimed if isinstance(claimed, str) else None)
    if problem is not None:
        entry["rejected"] = problem
        count_wrong_emitter(DASHBOARD, subject, problem)
    entry["event"] = event
    return entry


def feed_filter(run_id: str | None = None, workflow: str | None = None) -> str:
    """The KEEL_EVENTS subject filter of one run, one workflow, or (neither given) every run."""
    try:
        if run_id:
            s.token(run_id, "run id")
            if workflow:
                return s.run_filter(s.token(workflow, "workflow"), run_id)
            return s.any_workflow_run_filter(run_id)
        if workflow:
            return s.workflow_filter(s.token(workflow, "workflow"))
    except s.InvalidToken as exc:
        raise FeedError(str(exc)) from None
    return s.EVENTS_ALL


def parse_last_event_id(value: str | None) -> int | None:
    """`Last-Event-ID` (or `?after=`): the stream sequence the client has already seen."""
    if value is None or value.strip() == "":
        return None
    try:
        seq = int(value.strip())
    except ValueError:
        raise FeedError(f"Last-Event-ID must be a stream sequence (an integer), got {value!r}") from None
    if seq < 0:
        raise FeedError("Last-Event-ID must not be negative")
    if seq > MAX_RESUME_SEQ:
        # The server refuses to start a consumer beyond it, and the feed would retry that for ever.
        raise FeedError(f"Last-Event-ID must be a stream sequence of at most {MAX_RESUME_SEQ}")
    return seq


async def run_events(
    js: JetStreamContext, subject_filter: str, *, after: int | None, start: StartAt, idle: float
) -> AsyncIterator[dict[str, Any] | None]:
    """Timeline entries after sequence `after` (or from `start`), then live; None when idle."""
    async for delivered in follow(js, s.EVENTS_STREAM, subject_filter, after=after, start=start, idle=idle):
        if delivered is None:
            yield None
            continue
        for entry in timeline_entries(delivered.seq, delivered.subject, delivered.data):
            yield entry
