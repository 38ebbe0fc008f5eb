"""A Python client for Keel over NATS: start runs, read their state and history, follow them live.

async with KeelClient.connect("nats://127.0.0.1:4244") as keel:
    answer = await keel.trigger("demo", {"message": "hi"}, intent_key="ticket-42", wait=True)
    print(answer.run_id, answer.joined, answer.status)
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, WrongEmitter, decode_event, encode
from keel_contracts.commands import CancelRun, CancelRunBody, HumanInput, HumanInputBody
from keel_contracts.deadletter import DeadLetter
from keel_contracts.envelope import Message, new_id
from keel_contracts.events import FINAL_STATUS_OF_EVENT, HumanInputReceived, HumanInputRejected, unpacked
from keel_contracts.runs import RunStatus, RunView, view_key
from keel_shared.connection import inbox_prefix
from keel_shared.eventstore import EventStore
from keel_shared.follow import StartAt, follow
from keel_shared.submitting import AnswerFn, Refused, submit_and_await
from keel_shared.triggers import build_trigger, submit_trigger

T = TypeVar("T")


class KeelError(Exception):
    pass


class TriggerRejected(KeelError):
    """The trigger started no run: the router dead-lettered it (`letter`), or the server would not store
    it. `reason` is the stable code (`invalid_input`, `too_large`, `too_many_runs`, ...)."""

    def __init__(self, reason: str, detail: str, letter: DeadLetter | None = None) -> None:
        super().__init__(f"trigger rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
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
class InputAnswer:
    run_id: str
    accepted: bool
    step_id: str | None
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "accepted": self.accepted, "step_id": self.step_id, "problems": self.problems}


@dataclass(frozen=True)
class TimelineEntry:
    seq: int
    subject: str
    event: Message | None  # None when this Keel cannot read the event (written by a newer version)
    raw: bytes
    # Why the event is not believed, when it is stored where its type's rightful emitter does not store it
    # (decision 026): shown, never read as part of the run.
    rejected: str | None = None

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
        if self.rejected is not None:
            doc["rejected"] = self.rejected
        doc["event"] = self.event.model_dump(mode="json") if self.event else _raw_json(self.raw)
        return doc


def _raw_json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None


class KeelClient:
    def __init__(self, nc: Client, tenant: str = "default", timeout: float = 5.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.tenant = tenant
        self._timeout = timeout
        self._events = EventStore(nc, self.js, "client", timeout=timeout)
        self._runs_kv: KeyValue | None = None

    async def _runs_bucket(self) -> KeyValue:
        # Binding a bucket asks the server for its stream info: once per client, not once per read (a
        # dashboard or a poll reads views many times, and during a failover every API call can time out).
        if self._runs_kv is None:
            try:
                self._runs_kv = await self.js.key_value(s.RUNS_BUCKET)
            except BucketNotFoundError:
                raise KeelError("Keel is not initialised on this server (run `keel init` or `keel up`)") from None
        return self._runs_kv

    @classmethod
    async def connect(cls, url: str, tenant: str = "default", **options: Any) -> "KeelClient":
        async def quiet(exc: Exception) -> None:
            # nats-py prints a traceback per failed reconnect by default; the CLI reports one clear line.
            return None

        options.setdefault("error_cb", quiet)
        # A secured server (docs/security.md): the `cli` identity's seed, and its private inbox prefix,
        # the only replies that identity may receive.
        seed = options.get("nkeys_seed") or os.environ.get("KEEL_NATS_NKEY_SEED_FILE")
        if seed:
            options["nkeys_seed"] = seed
            options.setdefault("inbox_prefix", inbox_prefix("cli"))
        try:
            # A cluster is given as a comma-separated list of its nodes' URLs (docs/operations.md).
            servers = [u.strip() for u in url.split(",") if u.strip()]
            nc = await nats.connect(servers, name="keel-cli", connect_timeout=3, max_reconnect_attempts=3, **options)
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
        actor: str | None = None,
    ) -> TriggerAnswer:
        """Start (or join) the run for this intent. Returns once the router has answered; with `wait`,
        once the run has finished or is blocked by a cap or limit. Raises `TriggerRejected` when the
        trigger started no run (see docs/limits.md for `too_large` and `too_many_runs`)."""
        trig = build_trigger(workflow, input, intent_key, source=source, tenant=self.tenant, actor=actor)
        try:
            outcome = await submit_trigger(self.nc, self.js, trig, wait=wait, timeout=timeout)
        except Refused as exc:
            raise TriggerRejected(exc.reason, exc.detail, exc.letter) from None
        except TimeoutError:
            raise KeelError(f"no answer for run {trig.run_id} within {timeout}s (is `keel up` running?)") from None
        return self._answer(
            trig.run_id,
            outcome.joined,
            workflow,
            trig.body.intent_key,
            trig.id,
            status=outcome.status,
            output=outcome.output,
            reason=outcome.reason,
        )

    # --- operating a run -------------------------------------------------------------------------
    async def human_input(
        self,
        run_id: str,
        data: dict[str, JsonValue],
        *,
        submitted_by: str,
        step_id: str | None = None,
        timeout: float = 30.0,
    ) -> InputAnswer:
        """Give input to a run parked in `needs_human`. The router validates it against the step's
        schema; the answer says whether it was accepted, or which problems made it refuse the input."""
        view = await self._existing(run_id)
        cmd_id = new_id()
        cmd = HumanInput(
            id=cmd_id,
            run_id=run_id,
            workflow=view.workflow,
            tenant=view.tenant,
            correlation_id=cmd_id,
            actor=f"human:{submitted_by}",
            dedupe_key=f"input:{cmd_id}",
            body=HumanInputBody(input=data, submitted_by=submitted_by, step_id=step_id),
        )

        def answer(event_type: str, event: Message | None) -> InputAnswer | None:
            if isinstance(event, HumanInputReceived) and event.body.command_id == cmd_id:
                return InputAnswer(run_id, True, event.step_id, [])
            if isinstance(event, HumanInputRejected) and event.body.command_id == cmd_id:
                return InputAnswer(run_id, False, event.step_id, list(event.body.problems))
            return None

        return await self._submit(s.router_input_subject(run_id), cmd, view.workflow, answer, timeout)

    async def cancel(self, run_id: str, *, requested_by: str, reason: str, timeout: float = 30.0) -> RunView:
        """Cancel a run: no new step or write starts. Returns the run's state afterwards (a run that had
        already finished keeps its final state)."""
        view = await self._existing(run_id)
        if view.status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED):
            return view
        cmd_id = new_id()
        cmd = CancelRun(
            id=cmd_id,
            run_id=run_id,
            workflow=view.workflow,
            tenant=view.tenant,
            correlation_id=cmd_id,
            actor=f"human:{requested_by}",
            dedupe_key=f"cancel:{cmd_id}",
            body=CancelRunBody(reason=reason, requested_by=requested_by),
        )

        def answer(event_type: str, event: Message | None) -> bool | None:
            # Cancelled by this command, or finished on its own before the command arrived.
            return True if event_type in FINAL_STATUS_OF_EVENT else None

        await self._submit(s.router_cancel_subject(run_id), cmd, view.workflow, answer, timeout)
        try:
            return await eventually_final(self, run_id, timeout)
        except TimeoutError:
            raise KeelError(f"run {run_id} was cancelled but its view did not follow within {timeout}s") from None

    async def _existing(self, run_id: str) -> RunView:
        s.token(run_id, "run id")
        view = await self.run(run_id)
        if view is None:
            raise KeelError(f"no run {run_id}")
        return view

    async def _submit(self, subject: str, cmd: Message, workflow: str, answer: AnswerFn[T], timeout: float) -> T:
        try:
            return await submit_and_await(
                self.nc, self.js, subject, cmd, s.run_filter(workflow, cmd.run_id), answer, timeout=timeout
            )
        except Refused as exc:
            raise KeelError(f"refused ({exc.reason}): {exc.detail}") from None
        except TimeoutError:
            raise KeelError(f"no answer for run {cmd.run_id} within {timeout}s (is the router running?)") from None

    @staticmethod
    def _answer(run_id: str, joined: bool, workflow: str, key: str, tid: str, **extra: Any) -> TriggerAnswer:
        return TriggerAnswer(run_id=run_id, joined=joined, workflow=workflow, intent_key=key, trigger_id=tid, **extra)

    # --- reading -----------------------------------------------------------------------------------
    async def runs(self, status: str | None = None) -> list[RunView]:
        kv = await self._runs_bucket()
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
        kv = await self._runs_bucket()
        try:
            entry = await kv.get(view_key(run_id))
        except KeyNotFoundError:
            return None
        return RunView.model_validate_json(entry.value or b"{}")

    async def timeline(self, run_id: str) -> list[TimelineEntry]:
        s.token(run_id, "run id")
        stored = await self._events.read(s.any_workflow_run_filter(run_id))
        return [entry for e in stored for entry in _entries(e.seq, e.subject, e.data)]

    async def watch(
        self, subject_filter: str = s.EVENTS_ALL, from_start: bool = False, after: int | None = None
    ) -> AsyncIterator[TimelineEntry]:
        """Run events as they are stored, in stream order: all of them (`from_start`), those after stream
        sequence `after` (resuming where an earlier watch stopped), or only new ones. It survives
        disconnects and server restarts, resuming after the last sequence it delivered, so nothing is
        missed or repeated (see keel_shared.follow and docs/events.md)."""
        start = StartAt.ALL if from_start else StartAt.NEW
        async for delivered in follow(self.js, s.EVENTS_STREAM, subject_filter, after=after, start=start):
            if delivered is not None:
                for entry in _entries(delivered.seq, delivered.subject, delivered.data):
                    yield entry


def _entries(seq: int, subject: str, data: bytes) -> list[TimelineEntry]:
    """The timeline entries of one stored event: one per fact it holds. A `run_started` that carries its
    run's first step (decision 025) is two entries with the same sequence, the start and then the step's
    `step_scheduled` under the subject it would have had on its own."""
    try:
        event: Message = decode_event(data, subject=subject)
    except WrongEmitter as exc:
        return [TimelineEntry(seq=seq, subject=subject, event=None, raw=data, rejected=exc.detail)]
    except ContractViolation:
        return [TimelineEntry(seq=seq, subject=subject, event=None, raw=data)]
    entries = [TimelineEntry(seq=seq, subject=subject, event=event, raw=data)]
    for carried in unpacked(event)[1:]:
        emitter = s.parse_event_subject(subject)[2]
        carried_subject = s.event_subject(carried.workflow, carried.run_id, emitter, carried.type)
        entries.append(TimelineEntry(seq=seq, subject=carried_subject, event=carried, raw=encode(carried)))
    return entries


async def eventually_final(keel: KeelClient, run_id: str, timeout: float) -> RunView:
    """The run's view once the router has stored its final state (the view follows the event)."""
    async with asyncio.timeout(timeout):
        while True:
            view = await keel.run(run_id)
            if view is not None and view.status.terminal:
                return view
            await asyncio.sleep(0.05)
