"""Creating Keel's streams, buckets and durable consumers: an admin step (`keel init`, or `keel up`).

Services bind to what exists and never create or change streams, so their NATS identities need no
stream-management rights. Running this twice is harmless: it creates what is missing and updates
what may be updated.
"""

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts import topology
from keel_shared.settings import KeelSettings


def events_stream(settings: KeelSettings) -> StreamConfig:
    return StreamConfig(
        name=s.EVENTS_STREAM,
        description="Keel run events: the immutable truth of every run",
        subjects=[s.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        # A full log must refuse new events loudly, never drop old evidence.
        discard=DiscardPolicy.NEW,
        max_bytes=settings.events_max_bytes,
        max_msg_size=settings.max_message_bytes,
        duplicate_window=settings.dedupe_window_seconds,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
        allow_atomic=True,
        republish=RePublish(src=s.EVENTS_ALL, dest=f"{s.LIVE_PREFIX}.run.>"),
    )


def commands_stream(settings: KeelSettings) -> StreamConfig:
    return StreamConfig(
        name=s.COMMANDS_STREAM,
        description="Keel commands and triggers: work for one service each",
        subjects=[s.COMMANDS_ALL, s.TRIGGERS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_msg_size=settings.max_message_bytes,
        duplicate_window=settings.dedupe_window_seconds,
    )


def timers_stream(settings: KeelSettings) -> StreamConfig:
    # Kept apart from KEEL_EVENTS: enabling schedules clears deny_purge, and timers must be cancellable.
    return StreamConfig(
        name=t.TIMERS_STREAM,
        description="Keel durable timers (message schedules): retry backoff, waits, expiries",
        subjects=[t.TIMERS_SCHEDULE_ALL, t.TIMERS_FIRE_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        allow_msg_schedules=True,
        # No max_age: it would delete a schedule whose delay is longer. Fired copies carry a TTL instead.
        allow_msg_ttl=True,
    )


def dlq_stream(settings: KeelSettings) -> StreamConfig:
    return StreamConfig(
        name=s.DLQ_STREAM,
        description="Keel dead letters: refused messages, kept whole with their reason",
        subjects=[s.DLQ_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        deny_delete=True,
        allow_direct=True,
    )


def audit_bucket_stream(settings: KeelSettings) -> StreamConfig:
    """The object store bucket of the audit service's segments (when `KEEL_AUDIT_STORE=object_store`).

    The layout is the standard object store's (so nats-py reads it as a bucket), but with delete, purge
    and roll-ups denied: a segment, once stored, can be neither removed nor replaced by a client.
    """
    bucket = settings.audit_bucket
    return StreamConfig(
        name=f"OBJ_{bucket}",
        description="Keel audit log: signed segments and the keyring (write once)",
        subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        allow_rollup_hdrs=False,
        deny_delete=True,
        deny_purge=True,
    )


@dataclass(frozen=True)
class DurableSpec:
    stream: str
    config: ConsumerConfig


def consumer_config(spec: topology.Durable, settings: KeelSettings) -> ConsumerConfig:
    """The consumer config of one durable of the topology table (ack settings: see `topology.Durable`)."""
    subjects = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.name,
        description=spec.description,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        filter_subjects=subjects if len(subjects) > 1 else None,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        max_ack_pending=spec.max_ack_pending,
    )


def durables(settings: KeelSettings) -> list[DurableSpec]:
    return [DurableSpec(spec.stream, consumer_config(spec, settings)) for spec in topology.DURABLES]


#: The consumer settings `keel init` owns, compared between the table and a provisioned store.
_OWNED = ("description", "deliver_policy", "ack_policy", "ack_wait", "max_ack_pending", "max_deliver")


def _filters(config: ConsumerConfig) -> list[str]:
    return sorted(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


def consumer_changes(existing: ConsumerConfig, wanted: ConsumerConfig) -> list[str]:
    """What provisioning `wanted` over `existing` changes, one line per setting (empty: identical)."""
    changes = []
    if _filters(existing) != _filters(wanted):
        changes.append(f"filter subjects {_filters(existing)} -> {_filters(wanted)}")
    for name in _OWNED:
        before, after = getattr(existing, name), getattr(wanted, name)
        if name == "max_deliver" and after is None:
            after = -1  # unset: the server's "unlimited"
        if name == "description" and not before and not after:
            continue
        if before != after and not (
            isinstance(before, float | int) and isinstance(after, float | int) and abs(before - after) < 1e-6
        ):
            changes.append(f"{name} {before!r} -> {after!r}")
    return changes


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.key_value(config.bucket)
    except BucketNotFoundError:
        await js.create_key_value(config)


async def provision(js: JetStreamContext, settings: KeelSettings) -> list[str]:
    """Create or update everything; returns what changed in consumers that already existed (`keel init`
    prints it), one line per durable and setting."""
    for config in (
        events_stream(settings),
        commands_stream(settings),
        timers_stream(settings),
        dlq_stream(settings),
    ):
        await _ensure_stream(js, config)
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=s.RUNS_BUCKET,
            description="Live run-state view (a projection of KEEL_EVENTS)",
            history=1,
            storage=StorageType.FILE,
            replicas=settings.replicas,
        ),
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=s.CLAIMS_BUCKET,
            description="Executor claims: one per command dedupe key",
            history=1,
            ttl=settings.claims_ttl_seconds,
            storage=StorageType.FILE,
            replicas=settings.replicas,
        ),
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=s.WEBHOOK_REPLAY_BUCKET,
            description="Webhook signatures seen inside the replay window (keys expire after it)",
            history=1,
            ttl=settings.webhook_replay_ttl_seconds,
            storage=StorageType.FILE,
            replicas=settings.replicas,
        ),
    )
    if settings.audit_store == "object_store":
        await _ensure_stream(js, audit_bucket_stream(settings))
    changed: list[str] = []
    for spec in durables(settings):
        name = spec.config.durable_name or ""
        try:
            existing = (await js.consumer_info(spec.stream, name)).config
        except NotFoundError:
            existing = None
        if existing is not None:
            changed += [f"{spec.stream} consumer {name}: {line}" for line in consumer_changes(existing, spec.config)]
        await js.add_consumer(spec.stream, spec.config)
    return changed
