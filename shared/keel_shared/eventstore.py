"""Appending to and reading a run's event stream in KEEL_EVENTS.

Appends are guarded by the run's expected last sequence (`Nats-Expected-Last-Subject-Sequence` with
the run-wide subject filter), so two writers can never interleave a run: the loser gets
`ConcurrencyConflict`, re-reads, and decides again. Several events of one transition go in one atomic
batch: all stored or none.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_contracts.envelope import Message, new_id
from keel_shared.publishing import RETRYABLE_PUBLISH_ERRORS, publish_with_retry

WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_MSG_ID = 10201


class ConcurrencyConflict(Exception):
    """Someone appended to the run since the writer last read it."""


class BatchAlreadyStored(Exception):
    """A retried batch was found already committed; its sequences must be re-read."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    subject: str
    data: bytes
    time: datetime | None = None


def _occ_headers(message: Message, emitter_subject_filter: str, expected_last_seq: int) -> dict[str, str]:
    return {
        "Nats-Msg-Id": message.dedupe_key,
        "Nats-Expected-Last-Subject-Sequence": str(expected_last_seq),
        "Nats-Expected-Last-Subject-Sequence-Subject": emitter_subject_filter,
    }


class EventStore:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        emitter: str,
        *,
        timeout: float = 5.0,
        budget: float = 30.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self._emitter = emitter
        self._timeout = timeout
        self._budget = budget
        self._replies: _DirectReplies | None = None

    def subject_of(self, message: Message) -> str:
        return s.event_subject(message.workflow, message.run_id, self._emitter, message.type)

    async def append_unguarded(self, message: Message) -> int:
        """Append without a sequence check: for facts that stand whatever the run did meanwhile
        (an executor's attempt outcome). Dedupe by `Nats-Msg-Id` still applies."""
        ack = await publish_with_retry(
            self._js,
            self.subject_of(message),
            encode(message),
            {"Nats-Msg-Id": message.dedupe_key},
            timeout=self._timeout,
            budget=self._budget,
        )
        return int(ack.seq)

    async def append(self, messages: Sequence[Message], expected_last_seq: int) -> int:
        """Append one transition of a run; returns the stream sequence of its last event."""
        if not messages:
            raise ValueError("nothing to append")
        run_ids = {(m.workflow, m.run_id) for m in messages}
        if len(run_ids) != 1:
            raise ValueError("one transition belongs to one run")
        workflow, run_id = run_ids.pop()
        run_filter = s.run_filter(workflow, run_id)
        if len(messages) == 1:
            message = messages[0]
            try:
                ack = await publish_with_retry(
                    self._js,
                    self.subject_of(message),
                    encode(message),
                    _occ_headers(message, run_filter, expected_last_seq),
                    timeout=self._timeout,
                    budget=self._budget,
                )
            except BadRequestError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise ConcurrencyConflict(str(exc)) from exc
                raise
            return int(ack.seq)
        return await self._append_batch(messages, run_filter, expected_last_seq)

    async def _append_batch(self, messages: Sequence[Message], run_filter: str, expected_last_seq: int) -> int:
        deadline = time.monotonic() + self._budget
        delay = 0.05
        while True:
            try:
                return await self._send_batch(messages, run_filter, expected_last_seq)
            except RETRYABLE_PUBLISH_ERRORS:
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _send_batch(self, messages: Sequence[Message], run_filter: str, expected_last_seq: int) -> int:
        # Atomic batch publish (ADR-50): nats-py has the headers but no helper. The first message and the
        # commit are requests; the ones between are plain publishes. Only the first carries the check.
        batch_id = new_id()
        last = len(messages)
        for index, message in enumerate(messages, start=1):
            headers = {
                "Nats-Msg-Id": message.dedupe_key,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(index),
            }
            if index == 1:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_seq)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = run_filter
            subject = self.subject_of(message)
            data = encode(message)
            if index == last:
                headers["Nats-Batch-Commit"] = "1"
                reply = await self._nc.request(subject, data, timeout=self._timeout, headers=headers)
                return self._batch_result(reply.data)
            if index == 1:
                reply = await self._nc.request(subject, data, timeout=self._timeout, headers=headers)
                if reply.data:
                    self._batch_result(reply.data)
            else:
                await self._nc.publish(subject, data, headers=headers)
        raise AssertionError("unreachable")

    @staticmethod
    def _batch_result(raw: bytes) -> int:
        doc = json.loads(raw)
        error = doc.get("error")
        if error:
            code = error.get("err_code")
            if code == WRONG_LAST_SEQUENCE:
                raise ConcurrencyConflict(error.get("description", "wrong last sequence"))
            if code == BATCH_DUPLICATE_MSG_ID:
                raise BatchAlreadyStored(error.get("description", "duplicate message id"))
            raise BadRequestError(code=error.get("code"), err_code=code, description=error.get("description"))
        return int(doc["seq"])

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> list[StoredEvent]:
        """Every stored event matching the filter with sequence > after_seq, in stream order.

        Uses batched direct get (ADR-31): no consumer is created, so reading a run is cheap.
        """
        out: list[StoredEvent] = []
        start = after_seq + 1
        while True:
            chunk = await self._direct_batch(subject_filter, start, batch)
            out.extend(chunk)
            if len(chunk) < batch:
                return out
            start = chunk[-1].seq + 1

    async def _direct_batch(self, subject_filter: str, start_seq: int, batch: int) -> list[StoredEvent]:
        if self._replies is None:
            self._replies = _DirectReplies(self._nc)
        request = {"next_by_subj": subject_filter, "seq": start_seq, "batch": batch}
        async with self._replies.expect() as (inbox, replies):
            await self._nc.publish(f"$JS.API.DIRECT.GET.{s.EVENTS_STREAM}", json.dumps(request).encode(), reply=inbox)
            out: list[StoredEvent] = []
            while True:
                try:
                    msg = await asyncio.wait_for(replies.get(), self._timeout)
                except TimeoutError as exc:
                    raise NatsTimeoutError(f"direct get of {subject_filter} timed out") from exc
                headers = msg.headers or {}
                if headers.get("Status"):  # 204: end of batch, 404: nothing (more) to read
                    if headers["Status"] not in ("204", "404"):
                        raise RuntimeError(f"direct get failed: {headers.get('Status')} {headers.get('Description')}")
                    return out
                stamp = headers.get("Nats-Time-Stamp")
                out.append(
                    StoredEvent(
                        seq=int(headers["Nats-Sequence"]),
                        subject=headers["Nats-Subject"],
                        data=msg.data,
                        time=_parse_time(stamp) if stamp else None,
                    )
                )
                if len(out) >= batch:
                    return out


class _DirectReplies:
    """One wildcard subscription for the replies of every batched direct get of this connection.

    A subscription per read costs a SUB and an UNSUB, and every subscription change makes the server
    drop its subject-match cache, which every other publish then pays for. Replies are routed to the
    read that asked by the last token of their reply subject.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._counter = 0

    async def _route(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject.rpartition(".")[2])
        if queue is not None:  # else a late reply of a read that gave up
            queue.put_nowait(msg)

    @contextlib.asynccontextmanager
    async def expect(self) -> AsyncIterator[tuple[str, asyncio.Queue[Msg]]]:
        if self._sub is None:
            async with self._subscribing:
                if self._sub is None:
                    self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
        self._counter += 1
        token = str(self._counter)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[token] = queue
        try:
            yield f"{self._prefix}.{token}", queue
        finally:
            del self._waiting[token]


def _parse_time(stamp: str) -> datetime | None:
    # Go's RFC 3339 with nanoseconds; Python parses at most microseconds.
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        micro = (frac + "000000")[:6] if frac else "000000"
        return datetime.fromisoformat(f"{head}.{micro}").replace(tzinfo=UTC)
    except ValueError:
        return None
