"""The guard every Keel consumer runs behind: bad input is dead-lettered, never crashes, never blocks.

For each delivered message, in this order:
- larger than the limit: dead-letter (`too_large`) and terminate;
- delivered more often than `max_deliveries` (a poison message that keeps killing or failing its
  handler): dead-letter (`max_deliveries`) and terminate, before the handler sees it again;
- a run event whose subject does not name the rightful emitter of its type (topology table): dead-letter
  (`wrong_emitter`, also counted in `keel_wrong_emitter_total`) before the handler sees it;
- decoding or the handler raises `ContractViolation` or a pydantic `ValidationError`: dead-letter with
  the reason and terminate;
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

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from keel_contracts.codec import ContractViolation, WrongEmitter, check_emitter
from keel_shared.deadletters import dead_letter
from keel_shared.logging import bound_context, get_logger
from keel_shared.metrics import HANDLER_SECONDS, MESSAGES_HANDLED
from keel_shared.settings import KeelSettings
from keel_shared.trust import count_wrong_emitter

log = get_logger(__name__)


class Delivery:
    """One delivered message and how it is settled: ack, negative ack (with a delay), reject (term),
    or "still working" (in progress). `committed` says it was settled."""

    __slots__ = ("committed", "metadata", "raw_message")

    def __init__(self, raw: Msg) -> None:
        self.raw_message = raw
        # Parsed once: nats-py parses the reply subject again on every `Msg.metadata`.
        self.metadata: Msg.Metadata = raw.metadata
        self.committed = False

    async def ack(self) -> None:
        self.committed = True
        await self.raw_message.ack()

    async def nack(self, delay: float | None = None) -> None:
        self.committed = True
        await self.raw_message.nak(delay=delay)

    async def reject(self) -> None:
        self.committed = True
        await self.raw_message.term()

    async def in_progress(self) -> None:
        await self.raw_message.in_progress()

    @property
    def stream_seq(self) -> int | None:
        """The message's sequence in its stream."""
        return self.metadata.sequence.stream if self.metadata.sequence else None


_CURRENT: ContextVar[Delivery] = ContextVar("keel_current_message")


def current_message() -> Delivery:
    """The message the running handler was given (its stream sequence, headers, delivery count), for
    handlers whose one argument is the decoded payload."""
    return _CURRENT.get()


def redelivered() -> bool:
    """Whether the running handler's message has been delivered before."""
    return (_CURRENT.get().metadata.num_delivered or 1) > 1


class Redeliver(Exception):
    """Ask for the message again after `delay` seconds (the work could not be done yet)."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


def _classify(exc: ValidationError, data: bytes, limit: int = 5) -> tuple[str, str]:
    """(reason, detail) for a message that could not be read as the handler's typed argument."""
    try:
        json.loads(data)
    except ValueError as bad:
        return "malformed_json", f"not valid JSON: {bad}"
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors()[:limit]]
    if exc.error_count() > limit:
        parts.append(f"... and {exc.error_count() - limit} more")
    return "invalid", "; ".join(parts)


#: Given a message about to be dead-lettered for too many deliveries, what the service knows about its
#: past tries (who held it, how each ended), or None.
HistoryOf = Callable[[Msg], Awaitable[str | None]]


class Guard:
    """Runs one consumer's handler on each delivered message, in the order the module docstring gives."""

    def __init__(
        self,
        service: str,
        consumer: str,
        settings: KeelSettings,
        js_getter: Callable[[], JetStreamContext],
        decode: Callable[[bytes], Any],
        handler: Callable[[Any], Awaitable[Any]],
        history_getter: Callable[[], HistoryOf | None] = lambda: None,
        run_events: bool = False,
    ) -> None:
        self._service = service
        self._consumer = consumer
        self._max_bytes = settings.max_message_bytes
        self._max_deliveries = settings.max_deliveries
        self._backoff = settings.redelivery_backoff
        self._js = js_getter
        self._decode = decode
        self._handler = handler
        self._history = history_getter
        # Whether what arrives are run events, each believed only from its rightful emitter.
        self._run_events = run_events
        self._seconds = HANDLER_SECONDS.labels(service, consumer)
        self._outcomes = {
            kind: MESSAGES_HANDLED.labels(service, consumer, kind) for kind in ("ack", "nak", "dead_letter")
        }

    async def __call__(self, raw: Msg) -> None:
        msg = Delivery(raw)
        delivered = msg.metadata.num_delivered or 1
        started = time.perf_counter()
        token = _CURRENT.set(msg)
        try:
            with bound_context(subject=raw.subject, delivery=delivered):
                await self._guarded(msg, raw, delivered)
        finally:
            self._seconds.observe(time.perf_counter() - started)
            _CURRENT.reset(token)

    async def _guarded(self, msg: Delivery, raw: Msg, delivered: int) -> None:
        if len(raw.data) > self._max_bytes:
            await self._refuse(msg, "too_large", f"message is {len(raw.data)} bytes, the limit is {self._max_bytes}")
            return
        if delivered > self._max_deliveries:
            detail = f"delivered {delivered} times without being handled"
            history = await _history(self._history(), raw)
            await self._refuse(msg, "max_deliveries", f"{detail}; history:\n{history}" if history else detail)
            return
        try:
            decoded = self._decode(raw.data)
            if self._run_events:
                try:
                    check_emitter(raw.subject, getattr(decoded, "type", None))
                except WrongEmitter as exc:
                    count_wrong_emitter(self._service, raw.subject, exc.detail)
                    raise
            await self._handler(decoded)
        except ContractViolation as exc:
            await self._refuse(msg, exc.reason, exc.detail)
            return
        except ValidationError as exc:
            await self._refuse(msg, *_classify(exc, raw.data))
            return
        except Redeliver as exc:
            await msg.nack(delay=exc.delay)
            self._outcomes["nak"].inc()
            log.info("redeliver", why=str(exc), delay=exc.delay)
            return
        except Exception:
            delay = self._backoff[min(delivered - 1, len(self._backoff) - 1)]
            log.exception("handler_failed", retry_in=delay)
            await msg.nack(delay=delay)
            self._outcomes["nak"].inc()
            return
        if not msg.committed:
            await msg.ack()
        self._outcomes["ack"].inc()

    async def _refuse(self, msg: Delivery, reason: str, detail: str) -> None:
        raw = msg.raw_message
        meta = msg.metadata
        await dead_letter(
            self._js(),
            service=self._service,
            consumer=self._consumer,
            reason=reason,
            detail=detail,
            subject=raw.subject,
            data=raw.data,
            headers=raw.headers,
            stream=meta.stream,
            stream_seq=msg.stream_seq,
            num_delivered=meta.num_delivered or 1,
        )
        await msg.reject()
        self._outcomes["dead_letter"].inc()


async def _history(history_of: HistoryOf | None, raw: Msg) -> str | None:
    if history_of is None:
        return None
    try:
        return await history_of(raw)
    except Exception:  # the dead letter matters more than its annotations
        log.exception("dead_letter_history_failed")
        return None
