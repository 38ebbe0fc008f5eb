"""The dashboard's domain logic without a server: filters, board snapshots, run-state gauges, SSE
framing, feed filters and resume points, and the consumer-lag collector."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from keel_contracts.runs import RunStatus, RunView
from keel_dashboard import sse
from keel_dashboard.board import FilterError, RunBoard, RunFilter
from keel_dashboard.feed import FeedError, feed_filter, parse_last_event_id, timeline_entries
from keel_dashboard.gauges import RunStateCollector
from keel_dashboard.watch import KV_PREFIX, apply_entry
from keel_shared.consumerlag import ACK_PENDING, PENDING, ConsumerLagCollector
from keel_shared.follow import Delivered

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def view(run_id: str, status: RunStatus, workflow: str = "demo", minutes: int = 0, seq: int = 1) -> RunView:
    at = T0 + timedelta(minutes=minutes)
    return RunView(
        run_id=run_id,
        workflow=workflow,
        tenant="default",
        intent_key=run_id,
        status=status,
        reason="",
        current_step=None,
        started_at=at,
        updated_at=at,
        last_seq=seq,
        steps_done=0,
        attempts=0,
        triggers=1,
    )


def board_of(*views: RunView) -> RunBoard:
    board = RunBoard()
    for v in views:
        board.apply(v)
    return board


def test_filters_parse_states_workflow_and_times() -> None:
    flt = RunFilter.parse("done,failed", "demo", "2026-01-01T12:00:00Z", "2026-01-01T13:00:00+00:00")
    assert flt.states == {RunStatus.DONE, RunStatus.FAILED}
    assert flt.workflow == "demo" and flt.since == T0 and flt.until == T0 + timedelta(hours=1)
    assert RunFilter.parse() == RunFilter()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"state": "finished"}, "unknown state"),
        ({"workflow": "a.b"}, "not a workflow"),
        ({"since": "yesterday"}, "ISO 8601"),
        ({"until": "2026-01-01T10:00:00"}, "UTC offset"),
    ],
)
def test_bad_filters_are_refused(args: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        RunFilter.parse(**args)


def test_snapshot_counts_every_state_and_lists_matching_runs_newest_first() -> None:
    board = board_of(
        view("r1", RunStatus.DONE, minutes=1),
        view("r2", RunStatus.RUNNING, minutes=2),
        view("r3", RunStatus.DONE, minutes=3),
        view("r4", RunStatus.DONE, workflow="other", minutes=4),
    )
    snap = board.snapshot(RunFilter.parse("done", "demo"), limit=10)
    assert [r["run_id"] for r in snap["runs"]] == ["r3", "r1"]
    # Counts ignore the state filter (so every state stays clickable) but honour the rest.
    assert snap["counts"]["done"] == 2 and snap["counts"]["running"] == 1 and snap["counts"]["failed"] == 0
    assert snap["total"] == 2 and snap["workflows"] == ["demo", "other"]
    assert "output" not in snap["runs"][0] and snap["runs"][0]["terminal"] is True
    assert board.snapshot(RunFilter(since=T0 + timedelta(minutes=3)), limit=1)["total"] == 2
    assert len(board.snapshot(RunFilter(), limit=1)["runs"]) == 1


def test_an_older_view_never_replaces_a_newer_one() -> None:
    board = board_of(view("r1", RunStatus.DONE, seq=9))
    assert board.apply(view("r1", RunStatus.RUNNING, seq=3)) is False
    assert board.get("r1") is not None and board.get("r1").status is RunStatus.DONE  # type: ignore[union-attr]


async def test_waiters_wake_on_change_and_time_out_without_one() -> None:
    board = RunBoard()
    seen = board.version
    assert await board.wait_for_change(seen, 0.01) is False
    waiter = asyncio.create_task(board.wait_for_change(seen, 5))
    await asyncio.sleep(0)
    board.apply(view("r1", RunStatus.RUNNING))
    assert await waiter is True


def test_kv_entries_update_and_remove_runs() -> None:
    board = RunBoard()
    data = view("r1", RunStatus.RUNNING).model_dump_json().encode()
    apply_entry(board, Delivered(5, f"{KV_PREFIX}run.r1", data, {}, 0))
    assert board.get("r1") is not None
    apply_entry(board, Delivered(6, f"{KV_PREFIX}run.r2", b"not json", {}, 0))  # logged, skipped
    apply_entry(board, Delivered(7, f"{KV_PREFIX}run.r1", b"", {"KV-Operation": "DEL"}, 0))
    assert board.get("r1") is None


def test_run_state_gauges_have_bounded_labels_and_ages() -> None:
    board = board_of(
        view("r1", RunStatus.DONE), view("r2", RunStatus.RETRYING, minutes=0), view("r3", RunStatus.RETRYING, minutes=5)
    )
    board.mark_ready()
    registry = CollectorRegistry()
    registry.register(RunStateCollector(board, clock=lambda: T0 + timedelta(minutes=10)))
    text = generate_latest(registry).decode()
    assert 'keel_runs_in_state{state="retrying",workflow="demo"} 2.0' in text
    assert 'keel_runs_in_state{state="needs_approval",workflow="demo"} 0.0' in text
    assert 'keel_run_oldest_state_age_seconds{state="retrying",workflow="demo"} 600.0' in text
    assert 'keel_run_oldest_state_age_seconds{state="done"' not in text
    assert "keel_dashboard_view_ready 1.0" in text
    assert "r1" not in text and "r2" not in text


def test_sse_frames() -> None:
    assert sse.frame({"a": "x\ny"}, event="run_event", id=7) == b'id: 7\nevent: run_event\ndata: {"a":"x\\ny"}\n\n'
    assert sse.comment() == b": keep-alive\n\n"
    assert sse.retry(500) == b"retry: 500\n\n"


def test_feed_filters_and_resume_points() -> None:
    assert feed_filter(run_id="r1") == "keel.run.*.r1.>"
    assert feed_filter(run_id="r1", workflow="demo") == "keel.run.demo.r1.>"
    assert feed_filter(workflow="demo") == "keel.run.demo.>"
    assert feed_filter() == "keel.run.>"
    with pytest.raises(FeedError):
        feed_filter(run_id="r1.>")
    assert parse_last_event_id(None) is None and parse_last_event_id(" 42 ") == 42
    for bad in ("x", "-1"):
        with pytest.raises(FeedError):
            parse_last_event_id(bad)


def test_timeline_entries_keep_unknown_events_whole() -> None:
    (entry,) = timeline_entries(3, "keel.run.demo.r1.router.something_new", b'{"step_id": "s", "body": {"x": 1}}')
    assert (entry["seq"], entry["type"], entry["emitter"], entry["step_id"]) == (3, "something_new", "router", "s")
    assert entry["event"] == {"step_id": "s", "body": {"x": 1}}
    assert [e["event"] for e in timeline_entries(4, "keel.run.demo.r1.router.x", b"\xff")] == [None]


def test_a_start_that_carries_its_first_step_is_two_entries_with_one_sequence() -> None:
    step = {"type": "step_scheduled", "step_id": "a", "attempt": 1, "body": {"tool": "demo.echo"}}
    data = json.dumps({"type": "run_started", "step_id": None, "body": {"intent_key": "k", "first_step": step}})

    started, scheduled = timeline_entries(5, "keel.run.demo.r1.router.run_started", data.encode())

    assert (started["seq"], started["type"]) == (5, "run_started")
    assert (scheduled["seq"], scheduled["type"], scheduled["step_id"]) == (5, "step_scheduled", "a")
    assert scheduled["subject"] == "keel.run.demo.r1.router.step_scheduled" and scheduled["event"] == step


async def test_consumer_lag_collector_reports_pending_and_keeps_the_last_value_on_errors() -> None:
    answers: list[Any] = [SimpleNamespace(num_pending=7, num_ack_pending=2), TimeoutError("server away")]

    async def info(stream: str, durable: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    lag = ConsumerLagCollector(info, interval=60)
    lag.add("S", "unit-durable")
    lag.add("S", "unit-durable")
    assert len(lag.durables) == 1
    await lag.poll_once()
    assert PENDING.labels("S", "unit-durable")._value.get() == 7
    assert ACK_PENDING.labels("S", "unit-durable")._value.get() == 2
    await lag.poll_once()
    assert PENDING.labels("S", "unit-durable")._value.get() == 7


def test_timeline_entries_mark_an_event_from_the_wrong_emitter_as_rejected() -> None:
    data = b'{"type": "approval_granted", "body": {"approval_id": "a1"}}'

    (forged,) = timeline_entries(6, "keel.run.refund.r1.executor.approval_granted", data)
    (real,) = timeline_entries(7, "keel.run.refund.r1.approval.approval_granted", data)

    assert "approval only" in forged["rejected"] and forged["event"]["body"]["approval_id"] == "a1"
    assert "rejected" not in real
