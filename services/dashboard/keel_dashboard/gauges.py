"""Run-state gauges, computed from the board at scrape time.

They live in the dashboard because it already holds the whole KEEL_RUNS view in memory (kept live by a
KV watch); the router only sees the runs it is touching. Labels are workflow x state: bounded by the
workflow catalogue and the RunStatus enum, never a run id.
"""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keel_dashboard.board import RunBoard


class RunStateCollector(Collector):
    def __init__(self, board: RunBoard, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._board = board
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily(
            "keel_runs_in_state",
            "Runs currently in each state, from the KEEL_RUNS view (final states count every run kept there).",
            labels=["workflow", "state"],
        )
        for (workflow, state), count in sorted(self._board.state_counts().items()):
            runs.add_metric([workflow, state], count)
        yield runs

        # "Stuck" alerts need an age, not a count: how long the least recently changed run has been
        # sitting in its (non-final) state.
        stale = GaugeMetricFamily(
            "keel_run_oldest_state_age_seconds",
            "Seconds since the least recently changed unfinished run in each state last changed.",
            labels=["workflow", "state"],
        )
        now = self._clock()
        for (workflow, state), since in sorted(self._board.oldest_unfinished().items()):
            stale.add_metric([workflow, state], max(0.0, (now - since).total_seconds()))
        yield stale

        ready = GaugeMetricFamily(
            "keel_dashboard_view_ready", "1 once the dashboard has loaded every run of the KEEL_RUNS view."
        )
        ready.add_metric([], 1.0 if self._board.ready else 0.0)
        yield ready

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering must not call collect() (the board is empty then anyway); the names are enough.
        yield GaugeMetricFamily("keel_runs_in_state", "", labels=["workflow", "state"])
        yield GaugeMetricFamily("keel_run_oldest_state_age_seconds", "", labels=["workflow", "state"])
        yield GaugeMetricFamily("keel_dashboard_view_ready", "")
