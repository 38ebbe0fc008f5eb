"""Driving the chaos workload: publish every planned trigger (again, until the server acknowledges it),
keep a bounded number of runs in flight, follow each run's status in the KV run view, and decide its
approval the way its plan says, through the approval service's HTTP API as an approver would."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable

import nats
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from keel_approval.client import ApprovalApiError, ApprovalClient
from keel_contracts import subjects as s
from keel_contracts.runs import RunStatus, RunView, view_key
from keel_shared.publishing import publish_message
from tests.chaos.monkey import ChaosMonkey
from tests.chaos.workload import TRIGGER_SOURCE, Decision, PlannedRun

POLL_SECONDS = 0.3


async def connect_forever(url: str) -> Client:
    """A connection that rides out server restarts: reconnect forever, quietly."""

    async def quiet(exc: Exception) -> None:
        return None

    return await nats.connect(
        url,
        name="keel-chaos-driver",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        error_cb=quiet,
    )


class Driver:
    def __init__(
        self,
        nc: Client,
        plans: list[PlannedRun],
        approvers: dict[str, ApprovalClient],
        *,
        in_flight: int,
        rate: float,
    ) -> None:
        self.js = nc.jetstream(timeout=3)
        self.plans = plans
        self.by_run = {plan.run_id: plan for plan in plans}
        self.approvers = approvers
        self.max_in_flight = in_flight
        self.rate = rate
        self.status: dict[str, RunStatus] = {}
        self.submitted: list[PlannedRun] = []
        self.publish_retries = 0
        self.read_errors = 0
        #: Approval API calls: decisions made, and refusals or failures by code.
        self.decisions: Counter[str] = Counter()
        self.approval_refusals: Counter[str] = Counter()

    # -- state ------------------------------------------------------------------------------------

    def settled(self, plan: PlannedRun) -> bool:
        """Finished, or parked where nothing more will happen: a run whose approval the plan decides is
        not settled until the decision has moved it on."""
        status = self.status.get(plan.run_id)
        if status is None:
            return False
        if status is RunStatus.NEEDS_APPROVAL:
            return plan.decision is Decision.LEAVE
        return status.terminal or status.parked

    def in_flight(self) -> int:
        # A run waiting for its approval does not hold a slot: the approver moves it on, not the stack.
        return sum(
            1
            for plan in self.submitted
            if not self.settled(plan) and self.status.get(plan.run_id) is not RunStatus.NEEDS_APPROVAL
        )

    def done(self) -> bool:
        return len(self.submitted) == len(self.plans) and all(self.settled(plan) for plan in self.plans)

    def unsettled(self) -> list[PlannedRun]:
        return [plan for plan in self.plans if not self.settled(plan)]

    # -- the three loops --------------------------------------------------------------------------

    async def submit(self) -> None:
        """Trigger the runs at `rate` per second (so the strikes fall among them rather than after
        them), never with more than `max_in_flight` unsettled."""
        started = time.monotonic()
        for number, plan in enumerate(self.plans):
            while self.in_flight() >= self.max_in_flight or time.monotonic() < started + number / self.rate:
                await asyncio.sleep(0.05)
            await self.publish(plan)
            self.submitted.append(plan)

    async def publish(self, plan: PlannedRun) -> None:
        """Publish until the server has stored it. The trigger's message id never changes, so a publish
        whose ack was lost is deduplicated by the server (and would join the same run if it were not)."""
        trigger = plan.trigger
        while True:
            try:
                await publish_message(
                    self.js, s.trigger_subject(TRIGGER_SOURCE), trigger, trigger.dedupe_key, timeout=2, budget=4
                )
                return
            except Exception:
                self.publish_retries += 1
                await asyncio.sleep(0.25)

    async def track(self, stop: asyncio.Event) -> None:
        kv: KeyValue | None = None
        while not stop.is_set():
            try:
                if kv is None:
                    kv = await self.js.key_value(s.RUNS_BUCKET)
                await self.read(kv, [p for p in self.submitted if not self.settled(p)])
            except Exception:
                self.read_errors += 1
                kv = None
            await asyncio.sleep(POLL_SECONDS)

    async def read(self, kv: KeyValue, plans: Iterable[PlannedRun]) -> None:
        for plan in plans:
            try:
                entry = await kv.get(view_key(plan.run_id))
            except KeyNotFoundError:
                continue  # the router has not started it yet
            self.status[plan.run_id] = RunView.model_validate_json(entry.value or b"{}").status

    async def snapshot(self, kv: KeyValue) -> dict[str, RunView | None]:
        """Every planned run's view, read once more after the system has settled."""
        views: dict[str, RunView | None] = {}
        for plan in self.plans:
            try:
                entry = await kv.get(view_key(plan.run_id))
            except KeyNotFoundError:
                views[plan.run_id] = None
                continue
            views[plan.run_id] = RunView.model_validate_json(entry.value or b"{}")
        return views

    async def approve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for client in self.approvers.values():
                await self.decide_pending(client)
            await asyncio.sleep(POLL_SECONDS)

    async def decide_pending(self, client: ApprovalClient) -> None:
        try:
            pending = (await asyncio.to_thread(client.list))["approvals"]
        except ApprovalApiError as exc:
            self.approval_refusals[exc.code] += 1  # "unreachable" while the service is down
            return
        for item in pending:
            plan = self.by_run.get(item["run_id"])
            if plan is None or plan.decision is Decision.LEAVE:
                continue
            try:
                if plan.decision is Decision.APPROVE:
                    await asyncio.to_thread(client.approve, item["approval_id"], item["payload_hash"], "chaos")
                else:
                    reason = "chaos: denied on purpose"
                    await asyncio.to_thread(client.deny, item["approval_id"], item["payload_hash"], reason)
                self.decisions[plan.decision.value] += 1
            except ApprovalApiError as exc:
                # `already_decided` after a decision whose answer was lost to a kill; `unreachable` while
                # the service is down. Anything else shows up in the counts and fails the run's checks.
                self.approval_refusals[exc.code] += 1
                if exc.status == 0:
                    return


async def drive(driver: Driver, monkey: ChaosMonkey, timeout: float) -> float:
    """Run the workload under the monkey until every run has settled and every target was struck at least
    once, or `timeout` passed; returns the seconds it took. The caller heals what the monkey left down."""
    stop = asyncio.Event()
    monkey_run = asyncio.create_task(monkey.run(stop), name="chaos-monkey")
    started = time.monotonic()
    loops = [
        asyncio.create_task(driver.track(stop), name="chaos-track"),
        asyncio.create_task(driver.approve(stop), name="chaos-approve"),
    ]
    submitting = asyncio.create_task(driver.submit(), name="chaos-submit")
    try:
        while not (driver.done() and monkey.covered()) and time.monotonic() - started < timeout:
            for task in (submitting, monkey_run, *loops):
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        submitting.cancel()
        await asyncio.gather(submitting, monkey_run, *loops, return_exceptions=True)
    return time.monotonic() - started
