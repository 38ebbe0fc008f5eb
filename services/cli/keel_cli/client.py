"""A Python client for Keel over NATS: start runs, read their state and history, follow them live.

async with KeelClient.connect("nats://127.0.0.1:4244") as keel:
    answer = await keel.trigger("demo", {"message": "hi"}, intent_key="ticket-42", wait=True)
    print(answer.run_id, answer.joined, answer.status)
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, decode, decode_event
from keel_contracts.deadletter import DeadLetter
from keel_contracts.envelope import Message
from keel_contracts.events import FINAL_STATUS_OF_EVENT, RunStarted, TriggerJoined
from keel_contracts.runs import RunView, view_key
from keel_shared.eventstore import EventStore
from keel_shared.publishing import publish_message
from keel_shared.triggers import build_trigger


class KeelError(Exception):
    pass


class TriggerRejected(KeelError):
    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"trigger rejected ({letter.reason}): {letter.detail}")
        self.letter = letter


@dataclass(frozen=True)
class TriggerAnswer:
    run_id: str
    joined: bool
    workflow: str
    intent_key: str
    trigger_id: str
    status: str | None = None
    output: dict[str, JsonValue] | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "joined": self.joined,
            "workflow": self.workflow,
            "intent_key": self.intent_key,
            "trigger_id": self.trigger_id,
            "status": self.status,
            "reason": self.reason,
            "output": self.output,
        }


@dataclass(frozen=True)
class TimelineEntry:
    seq: int
    subject: str
    event: Message | None  # None when this Keel cannot read the event (written by a newer version)
    raw: bytes

    @property
    def emitter(self) -> str:
        return s.parse_event_subject(self.subject)[2]

    @property
    def type(self) -> str:
        return s.parse_event_subject(self.subject)[3]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "subject": self.subject,
            "emitter": self.emitter,
            "type": self.type,
        }
        doc["event"] = self.event.model_dump(mode="json") if self.event else json.loads(self.raw or b"null")
        return doc


class KeelClient:
    def __init__(self, nc: Client, tenant: str = "default", timeout: float = 5.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.tenant = tenant
        self._timeout = timeout
        self._events = EventStore(nc, self.js, "client", timeout=timeout)

    @classmethod
    async def connect(cls, url: str, tenant: str = "default", **options: Any) -> "KeelClient":
        async def quiet(exc: Exception) -> None:
            # nats-py prints a traceback per failed reconnect by default; the CLI reports one clear line.
            return None

        options.setdefault("error_cb", quiet)
        try:
            nc = await nats.connect(url, name="keel-cli", connect_timeout=3, max_reconnect_attempts=3, **options)
        except Exception as exc:
            raise KeelError(f"cannot connect to NATS at {url}: {exc or type(exc).__name__}") from exc
        return cls(nc, tenant)

    async def close(self) -> None:
        await self.nc.drain()

    async def __aenter__(self) -> "KeelClient":
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- triggers --------------------------------------------------------------------------------
    async def trigger(
        self,
        workflow: str,
        input: dict[str, JsonValue],
        intent_key: str | None = None,
        *,
        source: str = "cli",
        wait: bool = False,
        timeout: float = 30.0,
    ) -> TriggerAnswer:
        """Start (or join) the run for this intent. Returns once the router has answered; with `wait`,
        once the run has finished."""
        trig = build_trigger(workflow, input, intent_key, source=source, tenant=self.tenant)
        rejected: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on_dead_letter(msg: Msg) -> None:
            try:
                letter = decode(DeadLetter, msg.data)
            except ContractViolation:
                return
            if letter.message_id == trig.dedupe_key and not rejected.done():
                rejected.set_result(letter)

        # Subscribe before publishing so neither the answer nor a rejection can be missed.
        dlq_sub = await self.nc.subscribe(s.dlq_subject(s.ROUTER, "*"), cb=on_dead_letter)
        events = self._follow(s.run_filter(workflow, trig.run_id), DeliverPolicy.ALL)
        next_event: asyncio.Future[Any] | None = None
        try:
            await publish_message(self.js, s.trigger_subject(source), trig, trig.dedupe_key, timeout=self._timeout)
            joined: bool | None = None
            final: TimelineEntry | None = None  # the run may have finished before this trigger joined it
            async with asyncio.timeout(timeout):
                while True:
                    next_event = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({next_event, rejected}, return_when=asyncio.FIRST_COMPLETED)
                    if rejected in done:
                        raise TriggerRejected(rejected.result())
                    entry = next_event.result()
                    event = entry.event
                    if entry.type in FINAL_STATUS_OF_EVENT:
                        final = entry
                    if (
                        joined is None
                        and isinstance(event, RunStarted | TriggerJoined)
                        and event.causation_id == trig.id
                    ):
                        joined = isinstance(event, TriggerJoined)
                    if joined is None:
                        continue
                    if not wait:
                        return self._answer(trig.run_id, joined, workflow, trig.body.intent_key, trig.id)
                    if final is not None:
                        body = getattr(final.event, "body", None)
                        return self._answer(
                            trig.run_id,
                            joined,
                            workflow,
                            trig.body.intent_key,
                            trig.id,
                            status=FINAL_STATUS_OF_EVENT[final.type],
                            output=getattr(body, "output", None),
                            reason=getattr(body, "reason", None),
                        )
        except TimeoutError:
            raise KeelError(f"no answer for run {trig.run_id} within {timeout}s (is `keel up` running?)") from None
        finally:
            if next_event is not None and not next_event.done():
                next_event.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await next_event
            await dlq_sub.unsubscribe()
            await events.aclose()

    @staticmethod
    def _answer(run_id: str, joined: bool, workflow: str, key: str, tid: str, **extra: Any) -> TriggerAnswer:
        return TriggerAnswer(run_id=run_id, joined=joined, workflow=workflow, intent_key=key, trigger_id=tid, **extra)

    # --- reading -----------------------------------------------------------------------------------
    async def runs(self, status: str | None = None) -> list[RunView]:
        try:
            kv = await self.js.key_value(s.RUNS_BUCKET)
        except BucketNotFoundError:
            raise KeelError("Keel is not initialised on this server (run `keel init` or `keel up`)") from None
        views = []
        try:
            keys = await kv.keys()
        except NotFoundError:  # nats-py's NoKeysError
            return []
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            view = RunView.model_validate_json(entry.value or b"{}")
            if status is None or view.status == status:
                views.append(view)
        return sorted(views, key=lambda v: v.started_at)

    async def run(self, run_id: str) -> RunView | None:
        kv = await self.js.key_value(s.RUNS_BUCKET)
        try:
            entry = await kv.get(view_key(run_id))
        except KeyNotFoundError:
            return None
        return RunView.model_validate_json(entry.value or b"{}")

    async def timeline(self, run_id: str) -> list[TimelineEntry]:
        s.token(run_id, "run id")
        stored = await self._events.read(s.any_workflow_run_filter(run_id))
        return [_entry(e.seq, e.subject, e.data) for e in stored]

    async def watch(self, subject_filter: str = s.EVENTS_ALL, from_start: bool = False) -> AsyncIterator[TimelineEntry]:
        """Run events as they are stored, in stream order. An ordered consumer recreates itself after a
        disconnect from the last sequence it delivered, so nothing is missed or repeated."""
        async for entry in self._follow(subject_filter, DeliverPolicy.ALL if from_start else DeliverPolicy.NEW):
            yield entry

    async def _follow(self, subject_filter: str, policy: DeliverPolicy) -> AsyncGenerator[TimelineEntry, None]:
        sub = await self.js.subscribe(
            subject_filter,
            stream=s.EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=policy),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                yield _entry(msg.metadata.sequence.stream, msg.subject, msg.data)
        finally:
            await sub.unsubscribe()


def _entry(seq: int, subject: str, data: bytes) -> TimelineEntry:
    try:
        event: Message | None = decode_event(data)
    except ContractViolation:
        event = None
    return TimelineEntry(seq=seq, subject=subject, event=event, raw=data)
