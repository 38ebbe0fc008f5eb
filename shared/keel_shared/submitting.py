"""Sending a message about one run and awaiting its answer in the run's own events.

The router answers nothing directly: what a trigger, human input or a cancel led to is an event in the
run's stream (caused by the message), or a dead letter naming the message when it was refused. Both are
watched before the message is published, so neither can be missed. A message the server refuses to store
(larger than the stream's limit) is refused here too, with the same reason a consumer would give.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, WrongEmitter, decode, decode_event, encode
from keel_contracts.deadletter import DeadLetter
from keel_contracts.envelope import Message
from keel_shared.publishing import publish_message, refused_as_too_large

T = TypeVar("T")

#: Looks at each event of the run in stream order (None when this version cannot read it) and returns the
#: answer once it is known.
AnswerFn = Callable[[str, Message | None], T | None]


class Refused(Exception):
    """The message was refused, with a reason code and a detail: dead-lettered by the consuming service
    (`letter` is its dead letter), or not even stored (`letter` is None)."""

    def __init__(self, reason: str, detail: str, letter: DeadLetter | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.letter = letter

    @classmethod
    def dead_lettered(cls, letter: DeadLetter) -> "Refused":
        return cls(letter.reason, letter.detail, letter)


async def submit_and_await(
    nc: Client,
    js: JetStreamContext,
    subject: str,
    message: Message,
    run_filter: str,
    answer: AnswerFn[T],
    *,
    service: str = s.ROUTER,
    timeout: float = 30.0,
    publish_timeout: float = 5.0,
) -> T:
    """Publish `message` (deduplicated by its dedupe key) and return what `answer` finds in the run's events.
    Raises `Refused` when the message was dead-lettered or too large to store, and `TimeoutError` when
    nothing answered in time."""
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[DeadLetter] = loop.create_future()

    async def on_dead_letter(msg: Msg) -> None:
        try:
            letter = decode(DeadLetter, msg.data)
        except ContractViolation:
            return
        if letter.message_id == message.dedupe_key and not refused.done():
            refused.set_result(letter)

    dlq = await nc.subscribe(s.dlq_subject(service, "*"), cb=on_dead_letter)
    events = await js.subscribe(
        run_filter,
        stream=s.EVENTS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    pending: asyncio.Future[Any] | None = None
    try:
        await _publish(js, subject, message, publish_timeout)
        async with asyncio.timeout(timeout):
            while True:
                pending = asyncio.ensure_future(events.next_msg(timeout=None))
                done, _ = await asyncio.wait({pending, refused}, return_when=asyncio.FIRST_COMPLETED)
                if refused in done:
                    raise Refused.dead_lettered(refused.result())
                msg = pending.result()
                pending = None
                try:
                    event: Message | None = decode_event(msg.data, subject=msg.subject)
                except WrongEmitter:
                    continue  # not from the router: whoever stored it, it answers nothing
                except ContractViolation:
                    event = None
                found = answer(s.parse_event_subject(msg.subject)[3], event)
                if found is not None:
                    return found
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        await dlq.unsubscribe()
        await events.unsubscribe()


async def _publish(js: JetStreamContext, subject: str, message: Message, timeout: float) -> None:
    try:
        await publish_message(js, subject, message, message.dedupe_key, timeout=timeout)
    except NatsError as exc:
        if not refused_as_too_large(exc):
            raise
        size = len(encode(message))
        server = exc.description if isinstance(exc, BadRequestError) else "larger than the server's max_payload"
        raise Refused(
            "too_large", f"the {message.type} is {size} bytes and the server refused to store it ({server})"
        ) from None
