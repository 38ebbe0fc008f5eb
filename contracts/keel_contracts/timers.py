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


def schedule_subject(workflow: str, run_id: str, timer_id: str) -> str:
    return f"keel.timer.sched.{workflow}.{run_id}.{timer_id}"


def fire_subject(workflow: str, run_id: str, timer_id: str) -> str:
    return f"keel.timer.fire.{workflow}.{run_id}.{timer_id}"


class TimerBody(Body):
    purpose: Literal["retry"]
    due_at: AwareDatetime
    # What the timer is for, so a stale firing can be recognised: the attempt it starts.
    next_attempt: int


class TimerFired(Message):
    type: Literal["timer_fired"] = "timer_fired"
    body: TimerBody
