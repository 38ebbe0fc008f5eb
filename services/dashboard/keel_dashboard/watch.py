"""Keeping the board live: a watch of the KEEL_RUNS bucket (its latest value per key, then updates).

nats-py's `kv.watchall()` is an ordered consumer that does not come back after a server restart, so
the watch reads the bucket's stream through `keel_shared.follow` instead: the latest value of each key
first, then every update, resuming from the last revision it saw.
"""

from nats.js import JetStreamContext
from pydantic import ValidationError

from keel_contracts import subjects as s
from keel_contracts.runs import RunView
from keel_dashboard.board import RunBoard
from keel_shared.follow import Delivered, StartAt, follow
from keel_shared.logging import get_logger

log = get_logger(__name__)

KV_STREAM = f"KV_{s.RUNS_BUCKET}"
KV_PREFIX = f"$KV.{s.RUNS_BUCKET}."
_REMOVED = {"DEL", "PURGE"}


def apply_entry(board: RunBoard, delivered: Delivered) -> None:
    """Apply one KV message (a put, a delete or a purge) to the board."""
    key = delivered.subject.removeprefix(KV_PREFIX)
    operation = delivered.headers.get("KV-Operation")
    if operation in _REMOVED or not delivered.data:
        board.remove(key.removeprefix("run."))
        return
    try:
        board.apply(RunView.model_validate_json(delivered.data))
    except ValidationError as exc:
        # A view written by a newer router may not parse here; one bad key must not stop the board.
        log.warning("run_view_unreadable", key=key, error=str(exc).splitlines()[0])


async def watch_runs(js: JetStreamContext, board: RunBoard, idle: float = 1.0) -> None:
    """Run until cancelled. The board is ready once everything stored at the start was applied."""
    async for delivered in follow(js, KV_STREAM, f"{KV_PREFIX}>", start=StartAt.LAST_PER_SUBJECT, idle=idle):
        if delivered is None:
            board.mark_ready()
            continue
        apply_entry(board, delivered)
        if delivered.pending == 0:
            board.mark_ready()
