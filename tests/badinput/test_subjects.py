"""Hostile messages on every subject a Keel service consumes, against a real stack (tests/badinput/conftest.py).

Consumed subjects (each a durable consumer provisioned by `keel init`; test_inventory.py fails when a new
one appears that `strategies.TARGETS` does not cover):

| durable | service | subjects | contract |
|---|---|---|---|
| router-triggers | router | keel.trigger.> | TriggerRun |
| router-commands | router | keel.cmd.router.> | HumanInput, CancelRun |
| router-events | router | keel.run.*.*.executor.step_*, keel.run.*.*.approval.approval_* (per type) | those events |
| router-timers | router | keel.timer.fire.*.*.* | TimerFired |
| executor | executor | keel.run.*.*.router.{step_scheduled,run_started} | StepScheduled, RunStarted |
| approval-requests | approval | keel.run.*.*.router.approval_{requested,withdrawn} | ApprovalRequested, -Withdrawn |

(The table is `keel_contracts.topology.DURABLES`; test_inventory.py checks every durable of it is covered.)
| approval-timers | approval | keel.timer.fire.approval.*.*.* | ApprovalExpiryDue |

Besides those: the audit service reads every keel.run.> message from its own cursor, the dashboard follows
keel.run.> (server-sent events) and watches the KEEL_RUNS bucket, and the router folds every event under a
run's subjects. Garbage stored there must be recorded (audit), shown or skipped (dashboard), skipped with a
reason (the fold), and never stop what comes after it.

What must hold for every refused message: a dead letter on KEEL_DLQ from the consuming service, on its
first delivery, naming a clear reason (never `max_deliveries`, which would mean it was retried as a
transient fault) and the field at fault, with the original bytes kept whole; no process exits; every
/healthz stays `ok`; and valid runs started after the garbage complete.
"""

import base64
import json
import uuid
from functools import partial
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from keel_cli.client import KeelClient
from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_contracts.envelope import run_id_for
from keel_contracts.runs import view_key
from keel_shared.triggers import build_trigger
from tests.badinput.kit import (
    BadInputStack,
    DeadLetters,
    assert_all_alive_and_healthy,
    gather_limited,
    message_id,
    metric,
    short,
)
from tests.badinput.strategies import (
    CLEAR_REASONS,
    SERVICE_MAX_BYTES,
    TARGETS,
    Garbage,
    approval_request,
    draw_many,
    explicit_garbage,
    garbage,
    hostile_intent_key,
    hostile_trigger_input,
    json_values,
)
from tests.conftest import eventually
from tests.integration.router_kit import events_of, reaches

pytestmark = pytest.mark.integration

#: Generated refusals per consumer, on top of the explicit ones: ~300 messages in all.
EXAMPLES_PER_TARGET = 40


async def publish(nc: Client, item: Garbage) -> tuple[str, int]:
    ack = await nc.jetstream().publish(item.subject, item.data, headers={**item.headers, "Nats-Msg-Id": message_id()})
    return ack.stream, ack.seq


async def run_demo(keel: KeelClient, key: str, data: dict[str, Any] | None = None) -> None:
    answer = await keel.trigger("demo", data or {"customer": "ACME"}, key, wait=True, timeout=120)
    assert answer.status == "done", f"valid run {answer.run_id} ended {answer.status}: {answer.reason}"


def refusal_problems(item: Garbage, letter: Any) -> list[str]:
    target = TARGETS[item.target]
    problems = []
    if letter.service != target.service:
        problems.append(f"refused by {letter.service}, expected {target.service}")
    if letter.reason not in CLEAR_REASONS:
        problems.append(f"reason {letter.reason!r} is not a clear one ({letter.detail[:200]})")
    if len(item.data) > SERVICE_MAX_BYTES and letter.reason != "too_large":
        problems.append(f"over the size limit but refused as {letter.reason}")
    if not letter.detail.strip():
        problems.append("no detail")
    if item.mentions and letter.reason == "invalid" and item.mentions not in letter.detail:
        problems.append(f"detail does not name {item.mentions!r}: {letter.detail[:300]}")
    if base64.b64decode(letter.data_b64) != item.data:
        problems.append("the dead letter does not keep the original bytes")
    if letter.num_delivered != 1:
        problems.append(f"refused on delivery {letter.num_delivered}, not the first")
    return problems


async def test_garbage_on_every_consumed_subject_is_dead_lettered_with_a_clear_reason_and_runs_go_on(
    badinput_stack: BadInputStack,
) -> None:
    items = [
        item
        for target in TARGETS.values()
        for item in [*explicit_garbage(target), *draw_many(garbage(target), EXAMPLES_PER_TARGET)]
    ]
    nc = await nats.connect(badinput_stack.nats_url)
    letters = DeadLetters()
    try:
        await letters.start(nc)
        published = [(item, await publish(nc, item)) for item in items]

        # Valid traffic behind the garbage: a run through router and executor completes.
        async with await badinput_stack.handle.client() as keel:
            await run_demo(keel, f"after-garbage-{uuid.uuid4().hex}")

        def missing() -> list[str]:
            return [item.describe() for item, (stream, seq) in published if letters.of(stream, seq) is None]

        try:
            await eventually(lambda: not missing(), timeout=120)
        except AssertionError:
            raise AssertionError(f"{len(missing())} messages never dead-lettered:\n{short(missing())}") from None
        problems = [
            f"{item.describe()}\n    -> {'; '.join(found)}"
            for item, (stream, seq) in published
            if (found := refusal_problems(item, letters.of(stream, seq)))
        ]
        assert not problems, f"{len(problems)} of {len(published)} refusals unclear:\n{short(problems)}"
        assert not letters.unreadable, f"dead letters that are not DeadLetter documents: {letters.unreadable[:3]}"
        await assert_all_alive_and_healthy(badinput_stack)
    finally:
        await nc.close()


async def test_messages_over_the_size_limit_are_refused_by_the_server_or_dead_lettered_as_too_large(
    badinput_stack: BadInputStack,
) -> None:
    nc = await nats.connect(badinput_stack.nats_url)
    letters = DeadLetters()
    try:
        await letters.start(nc)
        stored = []
        for target in TARGETS.values():
            base = target.bases[0]("demo", "r" + uuid.uuid4().hex[:25])
            subject = target.subject(base)
            data = json.dumps({**base.model_dump(mode="json"), "actor": "x" * 300_000}).encode()
            try:
                ack = await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": message_id()})
            except APIError as exc:
                # Streams with a message size limit refuse it outright.
                assert "maximum" in str(exc.description), exc
            else:
                stored.append((target, ack))
            # Over the connection's max payload (1 MiB): refused before it leaves the client.
            with pytest.raises(MaxPayloadError):
                await nc.publish(subject, b"[" * (1024 * 1024 + 1))
        # What a stream stored anyway, the consuming service refuses on first delivery.
        for target, ack in stored:
            letter = await eventually(partial(letters.of, ack.stream, ack.seq), timeout=60)
            assert (letter.service, letter.reason, letter.num_delivered) == (target.service, "too_large", 1), letter
    finally:
        await nc.close()
    await assert_all_alive_and_healthy(badinput_stack)


async def test_valid_triggers_with_hostile_content_run_and_keep_it_as_inert_data(
    badinput_stack: BadInputStack,
) -> None:
    drawn = zip(draw_many(hostile_intent_key, 12), draw_many(hostile_trigger_input, 12), strict=False)
    # One run per case: hypothesis may draw a key twice, here or in another test on this session-wide
    # stack (say "0"), and two triggers with one key are one run by design (the second joins and finds
    # the first one's input), which is not what this test checks. A fresh prefix keeps every key apart.
    prefix = uuid.uuid4().hex[:8]
    cases: dict[str, dict[str, Any]] = {}
    for key, data in drawn:
        cases.setdefault(f"{prefix}-{key}"[:512], data)
    async with await badinput_stack.handle.client() as keel:

        async def one(key: str, data: dict[str, Any]) -> str | None:
            answer = await keel.trigger("demo", data, key, wait=True, timeout=120)
            if answer.status != "done":
                return f"key {key!r} input {data!r:.200}: ended {answer.status}: {answer.reason}"
            timeline = await keel.timeline(answer.run_id)
            outputs = {e.step_id: e.body.output for e in events_of(timeline, "step_succeeded")}
            expected = {
                "receive": {"echo": {"request": data}, "step": "receive"},
                "draft": {"echo": {"note": f"Posting one entry for intent {key}"}, "step": "draft"},
            }
            for step, output in expected.items():
                if outputs.get(step) != output:
                    return f"key {key!r}: step {step} output {outputs.get(step)!r:.300}, expected {output!r:.300}"
            if outputs["post"]["account"] != f"intent-{key}":
                return f"key {key!r}: ledger account {outputs['post']['account']!r}"
            return None

        problems = [p for p in await gather_limited((one(k, d) for k, d in cases.items()), limit=6) if p]
    assert not problems, "\n".join(problems)
    await assert_all_alive_and_healthy(badinput_stack)


def event_garbage(workflow: str, run_id: str, count: int) -> list[tuple[str, bytes]]:
    """Garbage on a run's own subjects, from every emitter (the router folds all of them)."""
    out = []
    for item in draw_many(garbage(TARGETS[s.ROUTER_EVENTS_DURABLE]), count):
        emitter, event_type = s.parse_event_subject(item.subject)[2:]
        out.append((s.event_subject(workflow, run_id, emitter, event_type), item.data))
    for emitter in (s.ROUTER, s.EXECUTOR, s.APPROVAL, "rogue"):
        out.append((s.event_subject(workflow, run_id, emitter, "step_succeeded"), b"[" * 5000 + b"]" * 5000))
        out.append((s.event_subject(workflow, run_id, emitter, "run_completed"), b'{"type": "run_completed"'))
    return out


async def test_garbage_stored_under_a_run_is_skipped_and_never_blocks_it(badinput_stack: BadInputStack) -> None:
    nc = await nats.connect(badinput_stack.nats_url)
    try:
        async with await badinput_stack.handle.client() as keel:
            # Before the run exists: its id follows from the intent key, so anyone can write there first.
            key = f"poisoned-{uuid.uuid4().hex}"
            for subject, data in event_garbage("demo", run_id_for("default", "demo", key), 8):
                await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": message_id()})
            await run_demo(keel, key)

            # While it is parked: the router must still take the input and finish the run.
            parked = await keel.trigger("review", {"customer": "ACME"}, f"parked-{uuid.uuid4().hex}")
            await reaches(keel, parked.run_id, "needs_human")
            for subject, data in event_garbage("review", parked.run_id, 8):
                await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": message_id()})
            answer = await keel.human_input(parked.run_id, {"amount": 3}, submitted_by="badinput")
            assert answer.accepted, answer
            await reaches(keel, parked.run_id, "done")
    finally:
        await nc.close()
    await assert_all_alive_and_healthy(badinput_stack)


async def test_audit_and_dashboard_record_garbage_events_and_keep_up(badinput_stack: BadInputStack) -> None:
    nc = await nats.connect(badinput_stack.nats_url)
    js = nc.jetstream()
    try:
        run_id = "r" + uuid.uuid4().hex[:25]
        seqs = []
        for subject, data in event_garbage("demo", run_id, 12):
            seqs.append((await js.publish(subject, data, headers={"Nats-Msg-Id": message_id()})).seq)
        for value in draw_many(json_values, 10):
            raw = json.dumps(value).encode()
            subject = s.event_subject("demo", run_id, "rogue", "odd")
            seqs.append((await js.publish(subject, raw, headers={"Nats-Msg-Id": message_id()})).seq)
        # A garbage run view in the bucket the dashboard watches.
        kv = await js.key_value(s.RUNS_BUCKET)
        for data in (b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"run_id": 1}', json.dumps({"x": "\u202e"}).encode()):
            await kv.put(view_key("r" + uuid.uuid4().hex[:25]), data)

        async with await badinput_stack.handle.client() as keel:
            key = f"after-events-{uuid.uuid4().hex}"
            await run_demo(keel, key)
        last = (await js.stream_info(s.EVENTS_STREAM)).state.last_seq

        # Audit recorded every message of the stream (it started at the first), garbage included: one record
        # each, none left out as a gap, all sealed.
        audit = badinput_stack.metrics_url("audit")
        await eventually(lambda: _at_least(audit, "keel_audit_records_written_total", last), timeout=60)
        await eventually(lambda: _at_least(audit, "keel_audit_last_sealed_seq", last), timeout=60)

        # The dashboard's timeline of that run streams every garbage event and what follows it.
        url = f"{badinput_stack.url('dashboard')}/api/runs/{run_id}/events"
        async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as response:
            assert response.status_code == 200
            seen: list[int] = []
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    seen.append(int(line.split(":", 1)[1]))
                if seen and seen[-1] >= seqs[-1]:
                    break
        assert seen == seqs
        board = (await httpx.AsyncClient(timeout=10).get(f"{badinput_stack.url('dashboard')}/api/runs")).json()
        assert any(row["intent_key"] == key and row["status"] == "done" for row in board["runs"]), board
    finally:
        await nc.close()
    await assert_all_alive_and_healthy(badinput_stack)


async def _at_least(url: str, name: str, value: float) -> bool:
    return await metric(url, name) >= value


async def test_a_reply_to_header_never_makes_a_service_publish_where_the_sender_says(
    badinput_stack: BadInputStack,
) -> None:
    nc = await nats.connect(badinput_stack.nats_url)
    try:
        inbox = f"badinput.reply.{uuid.uuid4().hex}"
        replies = await nc.subscribe(inbox)
        async with await badinput_stack.handle.client() as keel:
            key = f"reply-to-{uuid.uuid4().hex}"
            trig = encode(build_trigger("demo", {"customer": "ACME"}, key, source="badinput"))
            await nc.jetstream().publish(
                s.trigger_subject("badinput"), trig, headers={"Nats-Msg-Id": message_id(), "reply_to": inbox}
            )
            await reaches(keel, run_id_for("default", "demo", key), "done")
        with pytest.raises(nats.errors.TimeoutError):
            msg = await replies.next_msg(timeout=1)
            pytest.fail(f"the router answered on the sender's reply_to: {msg.subject} {msg.data!r}")
    finally:
        await nc.close()


async def test_an_approval_request_whose_payload_has_no_canonical_json_is_refused_on_first_delivery(
    badinput_stack: BadInputStack,
) -> None:
    # 1e400 is valid JSON that parses as infinity: the contract takes it, but no payload hash exists for it.
    nc = await nats.connect(badinput_stack.nats_url)
    letters = DeadLetters()
    try:
        await letters.start(nc)
        request = approval_request("refund", "r" + uuid.uuid4().hex[:25])
        data = encode(request).replace(b'"amount":100', b'"amount":1e400')
        ack = await nc.jetstream().publish(
            s.event_subject(request.workflow, request.run_id, s.ROUTER, request.type),
            data,
            headers={"Nats-Msg-Id": message_id()},
        )
        letter = await eventually(lambda: letters.of(ack.stream, ack.seq), timeout=60)
        assert (letter.reason, letter.num_delivered) == ("invalid", 1), letter
        assert "payload" in letter.detail
    finally:
        await nc.close()
