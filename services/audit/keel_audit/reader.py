"""Reading KEEL_EVENTS in stream order from the audit log's own cursor (docs/decisions/021-audit-consumer.md).

An *ordered consumer*: an ephemeral, in-memory pull consumer with no acknowledgements, created at a
start sequence and thrown away and re-created whenever anything looks wrong (a fetch error, the
consumer gone after a server restart, a sequence that jumps). The server keeps no state of ours worth
keeping; the position is the sealed log's cursor and the sequence the service expects next.

The consumer has no subject filter, so it delivers every message of the stream: a jump in the stream
sequence can only mean a message was lost on the way (re-read it) or is gone from the stream (a gap,
which the writer records).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from keel_audit.records import SourceRecord
from keel_shared.logging import get_logger

log = get_logger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Tokens of a v1 / v2 JetStream reply subject (``$JS.ACK.<stream>.<consumer>...`` /
#: ``$JS.ACK.<domain>.<account hash>.<stream>...``) and where the stored timestamp sits in each.
_V1_TOKENS: Final = 9
_V1_TIMESTAMP: Final = 7
_V2_TIMESTAMP: Final = 9


def stored_at(msg: Msg) -> datetime:
    """When the stream stored the message, truncated to microseconds.

    Computed from the integer nanoseconds in the reply subject rather than nats-py's float-based
    ``metadata.timestamp``, so the same message always gives the same record bytes.
    """
    tokens = (msg.reply or "").split(".")
    nanos = int(tokens[_V1_TIMESTAMP if len(tokens) == _V1_TOKENS else _V2_TIMESTAMP])
    return _EPOCH + timedelta(microseconds=nanos // 1000)


def source_record(msg: Msg) -> SourceRecord:
    meta = msg.metadata
    return SourceRecord(
        stream=meta.stream,
        seq=meta.sequence.stream,
        subject=msg.subject,
        time=stored_at(msg),
        headers=dict(msg.headers or {}),
        data=msg.data,
    )


class OrderedReader:
    """Delivers every message of ``stream`` from a start sequence, in order, re-created on demand."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        *,
        inbox_prefix: str,
        batch: int = 256,
        inactive_threshold: float = 30.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._inbox_prefix = f"{inbox_prefix}.".encode()
        self._batch = batch
        self._inactive_threshold = inactive_threshold
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None

    async def open(self, start_seq: int) -> None:
        await self.close()
        name = f"audit-{uuid.uuid4().hex[:16]}"
        config = ConsumerConfig(
            name=name,
            description="keel audit: ordered reader (ephemeral)",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start_seq, 1),
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            mem_storage=True,
            num_replicas=1,
            # The server removes it by itself if this process dies without closing it.
            inactive_threshold=self._inactive_threshold,
        )
        await self._js.add_consumer(self._stream, config)
        self._consumer = name
        self._sub = await self._js.pull_subscribe_bind(
            consumer=name, stream=self._stream, inbox_prefix=self._inbox_prefix
        )
        log.info("audit_reader_opened", start_seq=start_seq, consumer=name)

    async def fetch(self, timeout: float) -> list[Msg]:
        """The next messages in order; an empty list when none arrived within ``timeout``."""
        if self._sub is None:
            raise RuntimeError("reader is not open")
        try:
            return await self._sub.fetch(self._batch, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either, depending on where it waited
            return []

    async def close(self) -> None:
        sub, consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection: nothing left to release
                log.debug("audit_reader_unsubscribe_failed", error=str(exc))
        if consumer is not None:
            try:
                await self._js.delete_consumer(self._stream, consumer)
            except Exception as exc:  # gone already, or no connection: inactive_threshold reaps it
                log.debug("audit_reader_delete_failed", error=str(exc))
