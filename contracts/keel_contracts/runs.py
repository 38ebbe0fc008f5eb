"""The run-state view: what `keel runs`, dashboards and operators read from the KEEL_RUNS bucket.

It is a projection of KEEL_EVENTS kept by the router; replaying the events rebuilds it exactly.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    RETRYING = "retrying"
    NEEDS_APPROVAL = "needs_approval"
    NEEDS_HUMAN = "needs_human"
    BLOCKED = "blocked"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def parked(self) -> bool:
        """Waiting on a person or an operator: not finished, but nothing will happen by itself."""
        return self in PARKED_STATES


TERMINAL_STATES = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED})
PARKED_STATES = frozenset({RunStatus.NEEDS_APPROVAL, RunStatus.NEEDS_HUMAN, RunStatus.BLOCKED})


class RunView(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = 1
    run_id: str
    workflow: str
    tenant: str
    intent_key: str
    status: RunStatus
    reason: str
    current_step: str | None
    started_at: AwareDatetime
    updated_at: AwareDatetime
    last_seq: Annotated[int, Field(ge=0)]
    steps_done: int
    attempts: int
    triggers: int
    output: dict[str, JsonValue] | None = None
    error_class: str | None = None


def view_key(run_id: str) -> str:
    return f"run.{run_id}"
