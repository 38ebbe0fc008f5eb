"""Writing refused messages to KEEL_DLQ, whole and with the reason, so a refusal never loses data."""

import base64
from collections.abc import Mapping

from nats.js import JetStreamContext

from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_contracts.deadletter import DeadLetter
from keel_shared.logging import get_logger
from keel_shared.metrics import DEAD_LETTERS
from keel_shared.publishing import publish_with_retry

log = get_logger(__name__)

# Headers that are transport bookkeeping or could carry credentials never go into the dead letter.
_DROPPED_HEADERS = frozenset({"authorization", "nats-expected-last-subject-sequence", "cookie"})


def run_id_from_subject(subject: str) -> str | None:
    parts = subject.split(".")
    if len(parts) >= 4 and parts[:2] == ["keel", "run"]:
        return parts[3]
    if len(parts) >= 5 and parts[:2] == ["keel", "cmd"]:
        return parts[4]
    return None


async def dead_letter(
    js: JetStreamContext,
    *,
    service: str,
    consumer: str,
    reason: str,
    detail: str,
    subject: str,
    data: bytes,
    headers: Mapping[str, str] | None,
    stream: str | None = None,
    stream_seq: int | None = None,
    num_delivered: int | None = None,
) -> DeadLetter:
    headers = dict(headers or {})
    letter = DeadLetter(
        service=service,
        consumer=consumer,
        reason=reason,
        detail=detail[:8192],
        subject=subject,
        stream=stream,
        stream_seq=stream_seq,
        num_delivered=num_delivered,
        message_id=headers.get("Nats-Msg-Id"),
        run_id=run_id_from_subject(subject),
        headers={k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS},
        data_b64=base64.b64encode(data).decode(),
        data_bytes=len(data),
    )
    # One dead letter per original message: a redelivery of the same refused message is deduplicated.
    dedupe = f"dlq:{stream}:{stream_seq}" if stream_seq is not None else f"dlq:{letter.id}"
    await publish_with_retry(js, s.dlq_subject(service, reason), encode(letter), {"Nats-Msg-Id": dedupe})
    DEAD_LETTERS.labels(service, consumer, reason).inc()
    log.warning("dead_lettered", reason=reason, detail=detail[:500], subject=subject, stream_seq=stream_seq)
    return letter
