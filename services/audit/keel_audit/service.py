"""The audit service process: KEEL_EVENTS, in stream order, into signed segments.

It reads the stream with an ordered consumer starting after the sealed log's cursor (see
:mod:`keel_audit.reader` and docs/decisions/021-audit-consumer.md), appends every message to the
:class:`SegmentWriter`, calls ``tick`` whenever the stream is idle (segments close by count or age; an
idle period yields signed heartbeat segments) and ``flush`` on a graceful stop. A crash loses nothing:
the open segment was never acknowledged to anyone, and the next start re-reads from the cursor.

Its NATS identity only reads KEEL_EVENTS (create/delete its ephemeral consumer, pull, stream info);
it never publishes run events. With the object store backend it also writes its bucket.

Writer calls run in a worker thread: sealing fsyncs a file or waits for the object store, and the
NATS loop must keep serving (the object store backend itself needs that loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from nats.aio.msg import Msg

from keel_audit import metrics
from keel_audit.config import audit_dir, ensure_signer, segment_policy, sensitive_paths
from keel_audit.erasure import DirectoryPayloadStore
from keel_audit.errors import AuditError, KeyMismatchError, SegmentExistsError, StoreCorruptError
from keel_audit.keyring import KeyringFile, KeyringStore
from keel_audit.objstore import LoopBridge, ObjectStoreSegmentStore
from keel_audit.reader import OrderedReader, source_record
from keel_audit.records import SourceRecord
from keel_audit.store import AuditDirectory, DirectorySegmentStore, SegmentStore
from keel_audit.verify import Severity, verify_log
from keel_audit.writer import AppendStatus, SealedSegment, SegmentWriter
from keel_contracts import subjects as s
from keel_contracts.topology import emitter_problem
from keel_shared.connection import inbox_prefix
from keel_shared.logging import get_logger
from keel_shared.service import ServiceRuntime
from keel_shared.settings import KeelSettings
from keel_shared.trust import count_wrong_emitter

log = get_logger(__name__)

#: Errors after which continuing would write a wrong log: stop the process and let an operator look.
FATAL = (KeyMismatchError, StoreCorruptError, SegmentExistsError)
#: Pause after an unexpected error before the reader is re-created (a server restart, a timeout).
RETRY_PAUSE = 1.0
#: A batch smaller than this is followed by a short pause before the next fetch (see `_consume`).
GATHER_BELOW = 64
GATHER_SECONDS = 0.02


class AuditService:
    def __init__(self, runtime: ServiceRuntime, settings: KeelSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.policy = segment_policy(settings)
        self.failed: BaseException | None = None
        self._writer: SegmentWriter | None = None
        self._store: SegmentStore | None = None
        self._keyring: KeyringStore | None = None
        self._reader: OrderedReader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        #: The stream sequence the log needs next (one past the last appended, sealed or not).
        self._next = 1
        #: Set when a sequence jump was seen: the reader is re-created once at this sequence to tell a
        #: message lost in transit (re-read) from one gone from the stream (a gap).
        self._confirming: int | None = None
        self._newest = 0
        # Between ticks the writer can only seal on append, so idle waits are a fraction of the age.
        self._idle_wait = min(
            1.0, self.policy.max_age.total_seconds() / 4, self.policy.heartbeat_interval.total_seconds() / 4
        )

    @property
    def writer(self) -> SegmentWriter:
        assert self._writer is not None, "the service has not started"
        return self._writer

    # -- storage ----------------------------------------------------------------------------------

    def _open_storage(self) -> tuple[SegmentStore, KeyringStore]:
        layout = AuditDirectory(audit_dir(self.settings))
        if self.settings.audit_store == "object_store":
            bridge = LoopBridge(asyncio.get_running_loop(), timeout=max(30.0, 4 * self.settings.publish_timeout))
            store = ObjectStoreSegmentStore(self.runtime.js, self.settings.audit_bucket, bridge)
            return store, store.keyring()
        return DirectorySegmentStore(layout.segments), KeyringFile(layout.keyring)

    # -- lifecycle (FastStream hooks) -------------------------------------------------------------

    async def start(self) -> None:
        store, keyring = self._open_storage()
        self._store, self._keyring = store, keyring
        signer = ensure_signer(self.settings)
        payloads = DirectoryPayloadStore(AuditDirectory(audit_dir(self.settings)).payloads)
        self._writer = await asyncio.to_thread(
            SegmentWriter,
            store,
            signer,
            stream=s.EVENTS_STREAM,
            keyring=keyring,
            payloads=payloads,
            policy=self.policy,
            sensitive=sensitive_paths(self.settings),
        )
        self._next = self.writer.cursor + 1
        metrics.LAST_SEALED_SEQ.set(self.writer.cursor)
        self._reader = OrderedReader(self.runtime.js, s.EVENTS_STREAM, inbox_prefix=inbox_prefix(s.AUDIT))
        log.info(
            "audit_started",
            cursor=self.writer.cursor,
            next_segment=self.writer.next_index,
            key_id=signer.key_id,
            store=self.settings.audit_store,
        )
        self._tasks.append(asyncio.create_task(self._consume(), name="audit-consume"))
        if self.settings.audit_verify_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._verify_periodically(), name="audit-verify"))

    async def stop(self) -> None:
        self._stopping.set()
        # The consumer finishes the batch in hand (never cancelled mid-append, which would let the flush
        # below race a writer call still running in its thread); the verifier is only reading.
        for task in self._tasks:
            if task.get_name() == "audit-verify":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None and self.failed is None:
            try:
                sealed = await asyncio.to_thread(self._writer.flush, "shutdown")
            except AuditError as exc:
                log.error("audit_flush_failed", error=str(exc))
            else:
                if sealed is not None:
                    self._sealed([sealed])
        log.info("audit_stopped", cursor=None if self._writer is None else self._writer.cursor)

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        log.error("audit_writer_stopped", error=str(exc), error_type=type(exc).__name__)
        self.runtime.app.exit()

    # -- consuming --------------------------------------------------------------------------------

    async def _consume(self) -> None:
        reader = self._reader
        assert reader is not None
        opened = False
        while not self._stopping.is_set():
            try:
                if not opened:
                    await reader.open(self._next)
                    opened = True
                batch = await reader.fetch(timeout=self._idle_wait)
                if batch:
                    opened = await self._handle(batch)
                    if len(batch) < GATHER_BELOW:
                        # Under a steady trickle every fetch returns a few events, and each batch costs a
                        # round trip and a hop to the writer thread; a short pause lets the next one fill.
                        # Nothing waits on the audit within 20 ms: segments are sealed by the second.
                        await asyncio.sleep(GATHER_SECONDS)
                else:
                    await self._idle()
            except FATAL as exc:
                self._fail(exc)
                return
            except Exception as exc:
                # A server restart, a deleted consumer, a storage hiccup: start over from what is sealed
                # and appended. Nothing was acknowledged, so nothing can have been skipped.
                log.warning("audit_read_failed", error=str(exc), error_type=type(exc).__name__, next_seq=self._next)
                opened = False
                with contextlib.suppress(Exception):
                    await reader.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RETRY_PAUSE)

    async def _handle(self, batch: list[Msg]) -> bool:
        """Append the in-order part of ``batch``; False when the reader must be re-created."""
        records: list[SourceRecord] = []
        keep_reader = True
        for msg in batch:
            meta = msg.metadata
            seq = meta.sequence.stream
            self._newest = max(self._newest, seq + (meta.num_pending or 0))
            if seq < self._next:
                continue  # delivered again after a re-creation: already appended
            if seq > self._next:
                if self._confirming != self._next:
                    log.warning("audit_sequence_jump", expected=self._next, got=seq)
                    self._confirming = self._next
                    keep_reader = False
                    break
                # Re-read from the expected sequence and still missing: gone from the stream.
                log.error("audit_gap", from_seq=self._next, to_seq=seq - 1)
                metrics.GAPS.inc()
            self._confirming = None
            # Recorded whatever it is (the log is the whole stream), but counted when its subject names
            # another emitter than its type's rightful one: `keel audit show` lists it as rejected.
            problem = emitter_problem(msg.subject, None)
            if problem is not None:
                count_wrong_emitter(s.AUDIT, msg.subject, problem)
            records.append(source_record(msg))
            self._next = seq + 1
        if records:
            sealed = await asyncio.to_thread(self._append_all, records)
            self._sealed(sealed)
        self._update_lag()
        return keep_reader

    def _append_all(self, records: Iterable[SourceRecord]) -> list[SealedSegment]:
        sealed: list[SealedSegment] = []
        for record in records:
            result = self.writer.append(record)
            if result.status is AppendStatus.APPENDED:
                metrics.RECORDS_WRITTEN.inc()
            sealed.extend(result.sealed)
        return sealed

    async def _idle(self) -> None:
        sealed = await asyncio.to_thread(self.writer.tick)
        if sealed is not None:
            self._sealed([sealed])
        try:
            info = await self.runtime.js.stream_info(s.EVENTS_STREAM)
        except Exception as exc:  # only the lag gauge depends on it
            log.debug("audit_stream_info_failed", error=str(exc))
        else:
            self._newest = max(self._newest, info.state.last_seq)
        self._update_lag()

    def _sealed(self, sealed: Iterable[SealedSegment]) -> None:
        for segment in sealed:
            metrics.SEGMENTS_SEALED.labels(segment.seal.close_reason).inc()
            metrics.LAST_SEALED_SEQ.set(segment.last_seq)
            log.info(
                "audit_segment_sealed",
                segment=segment.index,
                first_seq=segment.first_seq,
                last_seq=segment.last_seq,
                records=segment.seal.count,
                reason=segment.seal.close_reason,
            )

    def _update_lag(self) -> None:
        metrics.LAG.set(max(0, self._newest - self.writer.cursor))

    # -- self-verification ------------------------------------------------------------------------

    async def _verify_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.verify_once()
            except Exception as exc:
                log.warning("audit_verify_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.audit_verify_interval_seconds)

    async def verify_once(self) -> None:
        """Verify the whole stored log against the published keyring and export the problem counts.

        This catches damage to the store (a modified or missing file), not a forger who also controls
        the keyring: that needs an independent keyring and checkpoint (``keel audit verify``)."""
        store, keyring_store = self._store, self._keyring
        assert store is not None and keyring_store is not None

        def run() -> tuple[str, dict[Severity, int]]:
            keyring = keyring_store.load()
            if keyring is None:
                raise AuditError("no keyring published yet")
            if not store.indices():
                return "valid", {severity: 0 for severity in Severity}  # nothing sealed yet: nothing to check
            report = verify_log(store, keyring)
            counts = {severity: 0 for severity in Severity}
            for problem in report.problems:
                counts[problem.severity] += 1
            return report.verdict.name.lower(), counts

        verdict, counts = await asyncio.to_thread(run)
        for severity, count in counts.items():
            metrics.VERIFY_PROBLEMS.labels(severity.value).set(count)
        metrics.VERIFY_RUNS.labels(verdict).inc()
        if verdict != "valid":
            log.warning("audit_verify_problems", verdict=verdict, **{k.value: v for k, v in counts.items()})


def build(settings: KeelSettings) -> tuple[ServiceRuntime, AuditService]:
    runtime = ServiceRuntime(s.AUDIT, settings)
    service = AuditService(runtime, settings)
    runtime.app.after_startup(service.start)
    runtime.app.on_shutdown(service.stop)
    return runtime, service
