"""Admitting triggers: a tenant may have at most KEEL_MAX_RUNS_IN_FLIGHT runs that are not done, failed or
cancelled (parked and blocked runs count); a trigger that would start another is refused with
`too_many_runs`. A trigger that joins an existing run is never refused. See docs/limits.md and decision 011.

The count is a projection that each router process keeps for itself from the events that begin and end
runs (`run_started`; `run_completed`, `run_failed`, `run_cancelled`), so admission adds no write to a run's
path and several routers need no coordination. On top of what the stream shows, a process counts the runs
it has just admitted whose `run_started` it has not seen yet, so one process never overshoots by itself.
Between processes the count is eventually consistent: a run another router started becomes visible here
once its `run_started` arrives (milliseconds), so racing routers can admit together at most about
`(routers - 1) x KEEL_ROUTER_CONCURRENCY` runs more than the limit.
"""

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation
from keel_contracts.events import FINAL_STATUS_OF_EVENT
from keel_router.metrics import RUNS_IN_FLIGHT, TRIGGERS_REFUSED
from keel_shared.follow import Delivered, StartAt, follow
from keel_shared.logging import get_logger
from keel_shared.service import ServiceRuntime

log = get_logger(__name__)

STARTED = "run_started"
FINAL_EVENTS = frozenset(FINAL_STATUS_OF_EVENT)
#: Where the projection reads from: only the events that begin or end a run, never a run's other events.
COUNTED_SUBJECTS = [s.event_type_filter(s.ROUTER, t) for t in (STARTED, *sorted(FINAL_EVENTS))]

#: A run this process admitted counts on its own until its `run_started` is seen; if that never happens
#: (the append failed in a way nobody noticed), the reservation lapses after this long.
RESERVATION_SECONDS = 60.0
#: Runs seen ending, remembered so that a run another router started and ended while this one was deciding
#: on it (and found it missing) is not counted again by this one.
REMEMBERED_FINAL_RUNS = 10_000


class TooManyRuns(ContractViolation):
    """The tenant has as many runs in flight as the limit allows: the trigger is dead-lettered with this."""

    def __init__(self, tenant: str, count: int, limit: int) -> None:
        super().__init__(
            "too_many_runs",
            f"tenant {tenant!r} has {count} runs in flight (not done, failed or cancelled; parked and blocked "
            f"runs count) and the limit is {limit} (KEEL_MAX_RUNS_IN_FLIGHT): no new run started. Trigger "
            "again once runs finish or are cancelled; the same intent key still names the same run.",
        )
        self.tenant = tenant
        self.count = count
        self.limit = limit


class NotReady(Exception):
    """The count has not been read from the stream yet, so a new run can be neither admitted nor refused."""


class RunsInFlight:
    """Per tenant, the runs in flight: seen started and not seen ending, plus this process's admissions
    not seen yet. Single-threaded (asyncio): check-and-reserve cannot interleave."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._seen: dict[str, set[str]] = {}
        self._reserved: dict[str, dict[str, float]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._ready = asyncio.Event()

    # --- the projection ---------------------------------------------------------------------------
    def observe(self, event_type: str, tenant: str, run_id: str) -> None:
        """A `run_started` or final event read from the stream."""
        self._reserved.get(tenant, {}).pop(run_id, None)
        if event_type == STARTED:
            if run_id not in self._ended:
                self._seen.setdefault(tenant, set()).add(run_id)
        elif event_type in FINAL_EVENTS:
            self._seen.get(tenant, set()).discard(run_id)
            self._ended[run_id] = None
            self._ended.move_to_end(run_id)
            while len(self._ended) > REMEMBERED_FINAL_RUNS:
                self._ended.popitem(last=False)
        RUNS_IN_FLIGHT.labels(tenant).set(self.count(tenant))

    def caught_up(self) -> None:
        """Everything stored when the projection started has been read: admission can decide."""
        if not self._ready.is_set():
            self._ready.set()
            log.info("runs_in_flight_loaded", tenants={t: len(ids) for t, ids in self._seen.items()})

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    # --- admission --------------------------------------------------------------------------------
    def count(self, tenant: str) -> int:
        seen = self._seen.get(tenant, set())
        reserved = self._reserved.get(tenant, {})
        if reserved:
            expired = self._clock() - RESERVATION_SECONDS
            for run_id in [r for r, at in reserved.items() if at < expired]:
                del reserved[run_id]
        return len(seen) + sum(1 for run_id in reserved if run_id not in seen)

    def admit(self, tenant: str, run_id: str) -> None:
        """Count a new run of `tenant`, or raise `TooManyRuns` (or `NotReady` before the count is loaded)."""
        if self.limit <= 0:
            return
        if not self.ready:
            raise NotReady("the count of runs in flight is still being read from the event stream")
        if run_id in self._seen.get(tenant, set()) or run_id in self._reserved.get(tenant, {}):
            return  # already counted (this very decision, taken again after a conflict)
        if run_id in self._ended:
            return  # another router started and ended it while this one was deciding: nothing to count
        count = self.count(tenant)
        if count >= self.limit:
            TRIGGERS_REFUSED.labels(tenant, "too_many_runs").inc()
            raise TooManyRuns(tenant, count, self.limit)
        self._reserved.setdefault(tenant, {})[run_id] = self._clock()
        RUNS_IN_FLIGHT.labels(tenant).set(count + 1)

    def withdraw(self, tenant: str, run_id: str) -> None:
        """The admitted run was not started after all (the handler failed): stop counting it here. If it
        was stored after all, its `run_started` counts it again."""
        self._reserved.get(tenant, {}).pop(run_id, None)


async def project(nc: Client, js: JetStreamContext, runs: RunsInFlight, idle: float = 5.0) -> None:
    """Keep `runs` up to date from the event stream, from its first event on, for as long as it runs.
    It is ready once it has read up to the last counted event stored when it started."""
    target = await _last_counted_seq(nc)
    if not target:
        runs.caught_up()
    async for delivered in follow(js, s.EVENTS_STREAM, COUNTED_SUBJECTS, start=StartAt.ALL, idle=idle):
        if delivered is None:
            continue
        _observe(runs, delivered)
        if delivered.seq >= target:
            runs.caught_up()


async def _last_counted_seq(nc: Client, timeout: float = 5.0) -> int:
    """The stream sequence of the latest counted event (0: none), by direct get of each filter's last."""
    last = 0
    for subject in COUNTED_SUBJECTS:
        request = json.dumps({"last_by_subj": subject}).encode()
        reply = await nc.request(f"$JS.API.DIRECT.GET.{s.EVENTS_STREAM}", request, timeout=timeout)
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404":
            continue
        if status:
            raise RuntimeError(f"direct get of {subject} failed: {status} {headers.get('Description')}")
        last = max(last, int(headers["Nats-Sequence"]))
    return last


def _observe(runs: RunsInFlight, delivered: Delivered) -> None:
    _, run_id, _, event_type = s.parse_event_subject(delivered.subject)
    try:
        tenant = json.loads(delivered.data)["tenant"]
    except (ValueError, KeyError, TypeError):
        log.warning("runs_in_flight_unreadable_event", seq=delivered.seq, subject=delivered.subject)
        return
    runs.observe(event_type, str(tenant), run_id)


def count_runs_in_flight(runtime: ServiceRuntime) -> RunsInFlight | None:
    """The router's count of runs in flight, kept up to date while `runtime` runs; None when
    KEEL_MAX_RUNS_IN_FLIGHT is 0 (no limit, and nothing followed)."""
    limit = runtime.settings.max_runs_in_flight
    if limit <= 0:
        return None
    runs = RunsInFlight(limit)
    tasks: list[asyncio.Task[None]] = []

    async def keep_counting() -> None:
        while True:
            try:
                await project(runtime.nc, runtime.js, runs)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Reading again from the start is harmless: every event sets, never adds to, the count.
                log.exception("runs_in_flight_projection_failed")
                await asyncio.sleep(1.0)

    async def start() -> None:
        tasks.append(asyncio.create_task(keep_counting(), name="runs-in-flight"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    runtime.app.after_startup(start)
    runtime.app.on_shutdown(stop)
    return runs
