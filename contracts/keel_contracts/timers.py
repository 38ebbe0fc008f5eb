"""Durable timers: NATS message schedules on KEEL_TIMERS (server 2.12+).

A timer is scheduled on `keel.timer.sched.<workflow>.<run_id>.<timer_id>` and fires a copy to
`keel.timer.fire.<workflow>.<run_id>.<timer_id>`. One schedule per subject: scheduling the same timer
again replaces it, which makes re-scheduling after a crash idempotent. A timer that fires late, or
twice, is harmless: the router acts on it only while the run still waits for exactly that timer.
"""

from typing import Literal

from pydantic import AwareDatetime

from keel_contracts.envelope import Body, Message

TIMERS_STREAM = "KEEL_TIMERS"
TIMERS_SCHEDULE_ALL = "keel.timer.sched.>"
TIMERS_FIRE_ALL = "keel.timer.fire.>"
ROUTER_TIMERS_DURABLE = "router-timers"
#: The router's timers have exactly three tokens after the prefix (workflow, run, timer). Approval
#: expiries have four (`approval`, workflow, run, key), so the two durables never see each other's timers,
#: whatever a workflow is called.
ROUTER_TIMERS_FIRE = "keel.timer.fire.*.*.*"
APPROVAL_TIMERS_DURABLE = "approval-timers"
APPROVAL_TIMERS_FIRE = "keel.timer.fire.approval.*.*.*"


def schedule_subject(workflow: str, run_id: str, timer_id: str) -> str:
    return f"keel.timer.sched.{workflow}.{run_id}.{timer_id}"


def fire_subject(workflow: str, run_id: str, timer_id: str) -> str:
    return f"keel.timer.fire.{workflow}.{run_id}.{timer_id}"


class TimerBody(Body):
    # retry: the backoff of a failed attempt; wait: a wait step; human_expiry: a human step's deadline.
    purpose: Literal["retry", "wait", "human_expiry"]
    due_at: AwareDatetime
    # What the timer is for, so a stale firing can be recognised: the attempt it starts (retry), or the
    # id of the park it ends (wait, human_expiry; 0 as next_attempt).
    next_attempt: int
    timer_id: str | None = None


class TimerFired(Message):
    type: Literal["timer_fired"] = "timer_fired"
    body: TimerBody


def approval_schedule_subject(workflow: str, run_id: str, key: str) -> str:
    """Where the approval service schedules the expiry of one approval (`key`: a token derived from its id)."""
    return f"keel.timer.sched.approval.{workflow}.{run_id}.{key}"


def approval_fire_subject(workflow: str, run_id: str, key: str) -> str:
    return f"keel.timer.fire.approval.{workflow}.{run_id}.{key}"
