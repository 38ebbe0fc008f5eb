"""The run view writer: status changes at once, progress coalesced, never an older view last."""

import asyncio
from datetime import UTC, datetime

from keel_contracts.runs import RunStatus, RunView
from keel_router.views import ViewWriter

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def view(seq: int, status: RunStatus = RunStatus.RUNNING, run_id: str = "r-1") -> RunView:
    return RunView(
        run_id=run_id,
        workflow="wf",
        tenant="default",
        intent_key="k",
        status=status,
        reason="",
        current_step=f"s{seq}",
        started_at=T0,
        updated_at=T0,
        last_seq=seq,
        steps_done=seq,
        attempts=seq,
        triggers=1,
    )


class Bucket:
    def __init__(self, delay: float = 0.0) -> None:
        self.puts: list[RunView] = []
        self.delay = delay

    async def put(self, v: RunView) -> None:
        await asyncio.sleep(self.delay)
        self.puts.append(v)

    def last(self, run_id: str = "r-1") -> RunView:
        return [v for v in self.puts if v.run_id == run_id][-1]


async def test_a_status_change_is_written_before_write_returns() -> None:
    bucket = Bucket()
    writer = ViewWriter(bucket.put, delay=10)

    await writer.write(view(1), status_changed=True)

    assert [v.last_seq for v in bucket.puts] == [1]


async def test_progress_within_a_status_is_coalesced_to_the_latest_view() -> None:
    bucket = Bucket()
    writer = ViewWriter(bucket.put, delay=0.05)

    for seq in (2, 3, 4):
        await writer.write(view(seq), status_changed=False)
    assert bucket.puts == []
    await asyncio.sleep(0.2)

    assert [v.last_seq for v in bucket.puts] == [4]


async def test_a_status_change_drops_the_runs_pending_progress() -> None:
    bucket = Bucket()
    writer = ViewWriter(bucket.put, delay=0.05)

    await writer.write(view(2), status_changed=False)
    await writer.write(view(3, RunStatus.DONE), status_changed=True)
    await asyncio.sleep(0.2)

    assert [(v.last_seq, v.status) for v in bucket.puts] == [(3, RunStatus.DONE)]


async def test_an_older_view_in_flight_never_lands_after_a_newer_one() -> None:
    bucket = Bucket(delay=0.05)  # every put is slow: the flush is still writing when the run finishes
    writer = ViewWriter(bucket.put, delay=0.0)

    await writer.write(view(2), status_changed=False)
    await asyncio.sleep(0.01)  # the flush has taken view 2 and is writing it
    await writer.write(view(5, RunStatus.DONE), status_changed=True)
    await writer.write(view(4), status_changed=False)  # a late, older progress view
    await asyncio.sleep(0.3)

    assert bucket.last().last_seq == 5 and bucket.last().status is RunStatus.DONE


async def test_flush_writes_every_pending_view() -> None:
    bucket = Bucket()
    writer = ViewWriter(bucket.put, delay=10)

    await writer.write(view(2, run_id="a"), status_changed=False)
    await writer.write(view(3, run_id="b"), status_changed=False)
    await writer.flush()

    assert sorted(v.run_id for v in bucket.puts) == ["a", "b"]


async def test_a_failed_progress_write_is_retried() -> None:
    attempts: list[int] = []

    async def flaky(v: RunView) -> None:
        attempts.append(v.last_seq)
        if len(attempts) == 1:
            raise ConnectionError("server away")

    writer = ViewWriter(flaky, delay=0.02)
    await writer.write(view(2), status_changed=False)
    await asyncio.sleep(0.2)

    assert attempts == [2, 2]
