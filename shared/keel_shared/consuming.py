"""The guard every Keel consumer runs behind: bad input is dead-lettered, never crashes, never blocks.

For each delivered message, in this order:
- larger than the limit: dead-letter (`too_large`) and terminate;
- delivered more often than `max_deliveries` (a poison message that keeps killing or failing its
  handler): dead-letter (`max_deliveries`) and terminate, before the handler sees it again;
- the handler raises `ContractViolation` or a pydantic `ValidationError` (including FastStream's own
  argument validation): dead-letter with the reason and terminate;
- the handler raises `Redeliver`: negative-ack with the delay it asks for;
- any other exception: logged, negative-ack with a delay growing with the delivery count, so the
  messages behind it keep flowing and a transient fault heals by itself;
- the handler returns: ack (unless it settled the message itself).

The consumer's own `max_deliver` is left unlimited on purpose: when the server gives up on a message
it leaves it stuck in a WorkQueue and only sends an advisory that nobody may be listening to. Counting
deliveries here dead-letters every poison message, whatever happened to the previous deliveries.
"""

import json
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from faststream import BaseMiddleware
from faststream.nats import NatsMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from keel_contracts.codec import ContractViolation
from keel_shared.deadletters import dead_letter
from keel_shared.logging import bound_context, get_logger
from keel_shared.metrics import HANDLER_SECONDS, MESSAGES_HANDLED
from keel_shared.settings import KeelSettings

log = get_logger(__name__)


_CURRENT: ContextVar[NatsMessage] = ContextVar("keel_current_message")


def current_message() -> NatsMessage:
    """The message the running handler was given. Handlers ask for it here rather than as a
    `NatsMessage` parameter: FastStream resolves such a parameter through its dependency injection,
    which hops to a worker thread for every message."""
    return _CURRENT.get()


def redelivered() -> bool:
    """Whether the running handler's message has been delivered before."""
    return (_CURRENT.get().raw_message.metadata.num_delivered or 1) > 1


class Redeliver(Exception):
    """Ask for the message again after `delay` seconds (the work could not be done yet)."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


def _classify(exc: ValidationError, data: bytes, limit: int = 5) -> tuple[str, str]:
    """(reason, detail) for a message FastStream could not bind to the handler's typed argument."""
    try:
        json.loads(data)
    except ValueError as bad:
        return "malformed_json", f"not valid JSON: {bad}"
    # Locations start with the handler's parameter name, which means nothing to the sender.
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or '(message)'}: {e['msg']}" for e in exc.errors()[:limit]]
    if exc.error_count() > limit:
        parts.append(f"... and {exc.error_count() - limit} more")
    return "invalid", "; ".join(parts)


#: Given a message about to be dead-lettered for too many deliveries, what the service knows about its
#: past tries (who held it, how each ended), or None.
HistoryOf = Callable[[Msg], Awaitable[str | None]]


def guard_middleware(
    service: str,
    settings: KeelSettings,
    js_getter: Callable[[], JetStreamContext],
    history_getter: Callable[[], HistoryOf | None] = lambda: None,
) -> type[BaseMiddleware]:
    max_bytes = settings.max_message_bytes
    max_deliveries = settings.max_deliveries
    backoff = settings.redelivery_backoff

    class Guard(BaseMiddleware):
        async def consume_scope(self, call_next: Callable[[Any], Any], msg: NatsMessage) -> Any:  # type: ignore[override]
            raw: Msg = msg.raw_message
            meta = raw.metadata
            consumer = meta.consumer or "?"
            delivered = meta.num_delivered or 1
            started = time.perf_counter()

            async def refuse(reason: str, detail: str) -> None:
                await dead_letter(
                    js_getter(),
                    service=service,
                    consumer=consumer,
                    reason=reason,
                    detail=detail,
                    subject=raw.subject,
                    data=raw.data,
                    headers=raw.headers,
                    stream=meta.stream,
                    stream_seq=meta.sequence.stream if meta.sequence else None,
                    num_delivered=delivered,
                )
                await msg.reject()
                MESSAGES_HANDLED.labels(service, consumer, "dead_letter").inc()

            token = _CURRENT.set(msg)
            with bound_context(subject=raw.subject, delivery=delivered):
                try:
                    if len(raw.data) > max_bytes:
                        await refuse("too_large", f"message is {len(raw.data)} bytes, the limit is {max_bytes}")
                        return None
                    if delivered > max_deliveries:
                        detail = f"delivered {delivered} times without being handled"
                        history = await _history(history_getter(), raw)
                        await refuse("max_deliveries", f"{detail}; history:\n{history}" if history else detail)
                        return None
                    try:
                        result = await call_next(msg)
                    except ContractViolation as exc:
                        await refuse(exc.reason, exc.detail)
                        return None
                    except ValidationError as exc:
                        await refuse(*_classify(exc, raw.data))
                        return None
                    except Redeliver as exc:
                        await msg.nack(delay=exc.delay)
                        MESSAGES_HANDLED.labels(service, consumer, "nak").inc()
                        log.info("redeliver", why=str(exc), delay=exc.delay)
                        return None
                    except Exception:
                        delay = backoff[min(delivered - 1, len(backoff) - 1)]
                        log.exception("handler_failed", retry_in=delay)
                        await msg.nack(delay=delay)
                        MESSAGES_HANDLED.labels(service, consumer, "nak").inc()
                        return None
                    if not msg.committed:
                        await msg.ack()
                    MESSAGES_HANDLED.labels(service, consumer, "ack").inc()
                    return result
                finally:
                    HANDLER_SECONDS.labels(service, consumer).observe(time.perf_counter() - started)
                    _CURRENT.reset(token)

    return Guard


async def _history(history_of: HistoryOf | None, raw: Msg) -> str | None:
    if history_of is None:
        return None
    try:
        return await history_of(raw)
    except Exception:  # the dead letter matters more than its annotations
        log.exception("dead_letter_history_failed")
        return None
