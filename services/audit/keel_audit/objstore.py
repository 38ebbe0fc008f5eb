"""Segments and the keyring in a JetStream object store bucket (``KEEL_AUDIT_STORE=object_store``).

Layout in the bucket: ``segments/<index:012d>.jsonl`` (one object per segment) and ``keyring.json``.

Write once. nats-py's ``ObjectStore.put`` replaces an object of the same name (a roll-up of its meta
subject), so segments are written here instead: the chunks first, then the meta message published
with ``Nats-Expected-Last-Subject-Sequence: 0``, which the server refuses if the name already has a
meta message. That is the object-store equivalent of the directory backend's ``link(2)``: two racing
writers cannot both win and a stored segment is never replaced. The bucket's stream is provisioned
(``keel_shared.provisioning``) with ``deny_delete``, ``deny_purge`` and no roll-ups, so a client cannot
remove or replace a segment either; only a stream administrator can delete the whole bucket. The
keyring is republished by appending a newer meta message (no roll-up), so its history stays in the
stream too.

The segment store protocol is synchronous (the writer and the verifier are plain code); these classes
run their NATS calls on an event loop owned by someone else through :class:`LoopBridge`, and must be
called from a worker thread, never from that loop's own thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.object_store import ObjectStore

from keel_audit.errors import AuditError, SegmentExistsError
from keel_audit.keyring import Keyring
from keel_audit.store import segment_name

T = TypeVar("T")

SEGMENTS_PREFIX: Final = "segments/"
KEYRING_OBJECT: Final = "keyring.json"
CHUNK_SIZE: Final = 128 * 1024
_SEGMENT_OBJECT: Final = re.compile(r"^segments/(\d{12})\.jsonl$")
#: JetStream's error code for a failed ``Nats-Expected-Last-Subject-Sequence`` check.
_WRONG_LAST_SEQUENCE: Final = 10071


def bucket_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class LoopBridge:
    """Runs coroutines on ``loop`` for synchronous callers in other threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 60.0) -> None:
        self.loop = loop
        self.timeout = timeout

    def call(self, factory: Callable[[], Awaitable[T]]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Blocking here would wait for the very loop that has to do the work.
            raise RuntimeError("object store calls must run in a worker thread, not on the NATS loop")

        async def run() -> T:
            return await factory()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(self.timeout)


@contextmanager
def background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a daemon thread, for synchronous programs (the CLI) that read a bucket."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="audit-objstore", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def put_object(js: JetStreamContext, bucket: str, name: str, data: bytes, *, create_only: bool) -> None:
    """Store ``data`` as object ``name``; with ``create_only``, refuse (SegmentExistsError) if it exists."""
    nuid = uuid.uuid4().hex
    chunk_subject = f"$O.{bucket}.C.{nuid}"
    chunks = 0
    for start in range(0, len(data), CHUNK_SIZE):
        await js.publish(chunk_subject, data[start : start + CHUNK_SIZE])
        chunks += 1
    info = ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=nuid,
        size=len(data),
        mtime=datetime.now(UTC).isoformat(),
        chunks=chunks,
        digest="SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode(),
        options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
    )
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"} if create_only else None
    try:
        await js.publish(_meta_subject(bucket, name), json.dumps(info.as_dict()).encode(), headers=headers)
    except BadRequestError as exc:
        if create_only and exc.err_code == _WRONG_LAST_SEQUENCE:
            # The chunks just published stay behind unreferenced: the bucket denies purge by design.
            raise SegmentExistsError(f"{name} already exists in bucket {bucket}") from exc
        raise


class ObjectStoreSegmentStore:
    """:class:`~keel_audit.store.SegmentStore` over a JetStream object store bucket."""

    def __init__(self, js: JetStreamContext, bucket: str, bridge: LoopBridge) -> None:
        self.js = js
        self.bucket = bucket
        self.bridge = bridge
        self._obs = ObjectStore(name=bucket, stream=bucket_stream(bucket), js=js)

    def _names(self) -> list[str]:
        async def names() -> list[str]:
            try:
                infos: list[ObjectInfo] = await self._obs.list(ignore_deletes=True)
            except NotFoundError:  # raised for an empty bucket, and for a missing one
                await self.js.stream_info(bucket_stream(self.bucket))  # tells the two apart
                return []
            return [info.name for info in infos if not info.deleted]

        try:
            return self.bridge.call(names)
        except NotFoundError as exc:
            raise AuditError(f"object store bucket {self.bucket} does not exist (run keel init)") from exc

    def indices(self) -> list[int]:
        found = (_SEGMENT_OBJECT.match(name) for name in self._names())
        return sorted(int(m.group(1)) for m in found if m)

    def read(self, index: int) -> bytes:
        return self._get(SEGMENTS_PREFIX + segment_name(index), index)

    def _get(self, name: str, key: Any) -> bytes:
        async def get() -> bytes:
            result = await self._obs.get(name)
            return bytes(result.data or b"")

        try:
            return self.bridge.call(get)
        except NotFoundError as exc:
            raise KeyError(key) from exc

    def write(self, index: int, data: bytes) -> None:
        name = SEGMENTS_PREFIX + segment_name(index)
        self.bridge.call(lambda: put_object(self.js, self.bucket, name, data, create_only=True))

    def location(self, index: int) -> str:
        return f"object store {self.bucket}: {SEGMENTS_PREFIX}{segment_name(index)}"

    def strays(self) -> list[str]:
        return sorted(n for n in self._names() if n != KEYRING_OBJECT and not _SEGMENT_OBJECT.match(n))

    def keyring(self) -> ObjectStoreKeyring:
        return ObjectStoreKeyring(self)


class ObjectStoreKeyring:
    """:class:`~keel_audit.keyring.KeyringStore` kept next to the segments in the same bucket."""

    def __init__(self, store: ObjectStoreSegmentStore) -> None:
        self._store = store

    def load(self) -> Keyring | None:
        try:
            raw = self._store._get(KEYRING_OBJECT, KEYRING_OBJECT)
        except KeyError:
            return None
        return Keyring.from_bytes(raw)

    def save(self, keyring: Keyring) -> None:
        store = self._store
        store.bridge.call(
            lambda: put_object(store.js, store.bucket, KEYRING_OBJECT, keyring.to_bytes(), create_only=False)
        )
