"""Whether the write an approval unlocked happened: read from the run's own events, never assumed.

A grant names a write; the router schedules it with the approval's id (`step_scheduled.approval_ids`),
and the executor records how each attempt ended. So the run's events answer "was it written?": the
approval service reads them when an approver looks, and remembers answers that can no longer change.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from keel_contracts.commands import execute_message_id
from keel_contracts.envelope import Message
from keel_contracts.events import FINAL_STATUS_OF_EVENT, StepFailed, StepSucceeded, scheduled_step, unpacked

WriteState = Literal["written", "failed", "not_sent", "pending"]


@dataclass(frozen=True)
class WriteOutcome:
    state: WriteState
    detail: str
    at: datetime | None = None

    @property
    def final(self) -> bool:
        """Whether the run's later events can still change it."""
        return self.state != "pending"


def write_outcome(approval_id: str, events: Iterable[Message]) -> WriteOutcome:
    """What happened to the write `approval_id` unlocked, given the run's events in stream order."""
    attempts: dict[str, str] = {}  # execute message id -> tool
    outcomes: list[StepSucceeded | StepFailed] = []
    ended: str | None = None
    for stored in events:
        for event in unpacked(stored):
            step = scheduled_step(event)
            if step is not None and approval_id in step.body.approval_ids:
                attempts[execute_message_id(step.body.command_id)] = step.body.tool
            elif isinstance(event, StepSucceeded | StepFailed) and event.causation_id in attempts:
                outcomes.append(event)
            elif event.type in FINAL_STATUS_OF_EVENT:
                ended = FINAL_STATUS_OF_EVENT[event.type]
    done = next((o for o in outcomes if isinstance(o, StepSucceeded)), None)
    if done is not None:
        return WriteOutcome("written", f"{done.body.tool} succeeded (attempt {done.attempt})", done.body.finished_at)
    if not attempts:
        if ended is not None:
            return WriteOutcome("not_sent", f"the run ended ({ended}) before the write was sent")
        return WriteOutcome("pending", "not sent yet")
    last = outcomes[-1] if outcomes else None
    if ended is not None and isinstance(last, StepFailed):
        return WriteOutcome(
            "failed",
            f"{last.body.tool} failed [{last.body.error_class}]: {last.body.message[:300]}",
            last.body.finished_at,
        )
    if ended is not None:
        return WriteOutcome("not_sent", f"the run ended ({ended}) with the write unanswered")
    if isinstance(last, StepFailed):
        return WriteOutcome("pending", f"attempt {last.attempt} failed [{last.body.error_class}]; the run goes on")
    return WriteOutcome("pending", "sent; waiting for its outcome")
