"""Following a stream from a known sequence, across disconnects and server restarts, with no gap and
no duplicate: what dashboards, `keel watch` and the SSE bridge build on.

A nats-py ordered consumer re-creates itself when it notices a gap, but after a server restart its
ephemeral consumer is simply gone and it waits forever (tried with nats-py 2.16). So the follower
remembers the last stream sequence it handed out, checks that its consumer still exists whenever the
stream is idle, and re-creates it from the next sequence when it does not. Sequences are the stream's,
so a restart from `last + 1` is exact, and anything at or below `last` is dropped.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError


class StartAt(StrEnum):
    ALL = "all"  # everything stored that matches, then live
    NEW = "new"  # only what is stored after the follower starts
    LAST_PER_SUBJECT = "last_per_subject"  # the latest message of each subject (a KV bucket's values), then live


@dataclass(frozen=True)
class Delivered:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    #: Matching messages still waiting after this one (0: the follower has caught up).
    pending: int


async def follow(
    js: JetStreamContext,
    stream: str,
    subject: str | Sequence[str],
    *,
    after: int | None = None,
    start: StartAt = StartAt.ALL,
    idle: float = 5.0,
    retry: float = 0.5,
) -> AsyncGenerator[Delivered | None, None]:
    """Yield what `stream` stores on `subject` (one filter, or several), in order, then follow it live.

    `after` resumes after that stream sequence (it wins over `start`). `None` is yielded whenever nothing
    arrived for `idle` seconds, so a caller can send keep-alives or note that it has caught up.
    """
    last = after
    if last is None and start is StartAt.NEW:
        # Pin "new" to a sequence now, so that a restart before the first message cannot skip any.
        last = await _retrying(lambda: _last_seq(js, stream), retry)
    filters = [subject] if isinstance(subject, str) else list(subject)
    while True:
        config = _config(last, start)
        if len(filters) > 1:
            config.filter_subjects = filters
        subscribe = functools.partial(js.subscribe, filters[0], stream=stream, ordered_consumer=True, config=config)
        sub = await _retrying(subscribe, retry)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle)
                except TimeoutError:
                    yield None
                    if await _consumer_gone(sub):
                        break
                    continue
                meta = msg.metadata
                seq = meta.sequence.stream
                if last is not None and seq <= last:
                    continue
                last = seq
                yield Delivered(seq, msg.subject, msg.data, dict(msg.headers or {}), meta.num_pending or 0)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _config(last: int | None, start: StartAt) -> ConsumerConfig:
    if last is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
    if start is StartAt.LAST_PER_SUBJECT:
        return ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)


async def _last_seq(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.last_seq)


async def _consumer_gone(sub: JetStreamContext.PushSubscription) -> bool:
    try:
        await sub.consumer_info()
    except NotFoundError:
        return True
    except (NatsError, TimeoutError):
        # Disconnected or the server is busy: keep waiting; the next idle check decides.
        return False
    return False


T = TypeVar("T")


async def _retrying(make: Callable[[], Awaitable[T]], pause: float) -> T:
    while True:
        try:
            return await make()
        except (NatsError, TimeoutError, OSError):
            await asyncio.sleep(pause)
