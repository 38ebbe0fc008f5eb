"""Publishing to JetStream so that a retry can never store a message twice.

Every publish carries `Nats-Msg-Id`; a timeout or a 503 during a leader election is retried with the
same id until the budget runs out, and the server's dedupe turns a retry of a stored message into a
duplicate ack instead of a second copy.
"""

import asyncio
import time

from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError
from pydantic import BaseModel

from keel_contracts.codec import encode

#: JetStream's error code for a message larger than the stream's max_msg_size (KEEL_MAX_MESSAGE_BYTES).
MESSAGE_TOO_LARGE = 10054


def refused_as_too_large(exc: BaseException) -> bool:
    """Whether a publish failed because the message is too large to store: retrying can never help."""
    if isinstance(exc, BadRequestError):
        return exc.err_code == MESSAGE_TOO_LARGE
    return isinstance(exc, MaxPayloadError)  # over the server's max_payload: refused before it was sent


RETRYABLE_PUBLISH_ERRORS = (
    NatsTimeoutError,
    NoStreamResponseError,
    ServiceUnavailableError,
    asyncio.TimeoutError,
)


async def publish_with_retry(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    timeout: float = 5.0,
    budget: float = 30.0,
) -> PubAck:
    if "Nats-Msg-Id" not in headers:
        raise ValueError("every Keel publish needs a Nats-Msg-Id so that retries stay idempotent")
    deadline = time.monotonic() + budget
    delay = 0.05
    while True:
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers)
        except RETRYABLE_PUBLISH_ERRORS:
            if time.monotonic() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def publish_message(
    js: JetStreamContext,
    subject: str,
    message: BaseModel,
    dedupe_key: str,
    *,
    timeout: float = 5.0,
    budget: float = 30.0,
) -> PubAck:
    return await publish_with_retry(
        js, subject, encode(message), {"Nats-Msg-Id": dedupe_key}, timeout=timeout, budget=budget
    )
