"""Encoding and decoding messages, and the reason given whenever bytes are not a valid message."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from keel_contracts.codec import DEFAULT_MAX_MESSAGE_BYTES, ContractViolation, decode, decode_event, encode
from keel_contracts.commands import ExecuteStep, ExecuteStepBody, TriggerRun
from keel_contracts.envelope import Message
from keel_contracts.events import EVENT_TYPES, RunStarted, StepScheduled


def as_doc(event: Message) -> dict:
    return json.loads(encode(event))


def test_there_is_a_sample_of_every_event_type(sample_events: dict[str, Message]):
    assert set(sample_events) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_type_round_trips_through_encode_and_decode_event(
    event_type: str, sample_event: Callable[[str], Message]
):
    event = sample_event(event_type)

    decoded = decode_event(encode(event))

    assert type(decoded) is EVENT_TYPES[event_type]
    assert decoded == event
    assert decoded.type == event_type
    assert decode(EVENT_TYPES[event_type], encode(event)) == event


def test_a_command_round_trips_through_decode():
    cmd = ExecuteStep(
        run_id="r-1",
        workflow="orders",
        step_id="charge",
        attempt=1,
        correlation_id="c-1",
        actor="router",
        dedupe_key="r-1.charge.1.1",
        body=ExecuteStepBody(tool="billing.charge", input={"a": [1]}, idempotency_key="k", timeout_seconds=3),
    )
    assert decode(ExecuteStep, encode(cmd)) == cmd


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"type": "run_started",', b"\xff\xfe"])
def test_malformed_json_is_reported_as_malformed_json(data: bytes):
    with pytest.raises(ContractViolation) as info:
        decode_event(data)
    assert info.value.reason == "malformed_json"
    with pytest.raises(ContractViolation) as info:
        decode(TriggerRun, data)
    assert info.value.reason == "malformed_json"


def test_an_event_type_this_version_does_not_know_is_unknown_type(sample_event: Callable[[str], Message]):
    doc = as_doc(sample_event("run_completed"))
    doc["type"] = "run_paused"

    with pytest.raises(ContractViolation) as info:
        decode_event(json.dumps(doc).encode())

    assert info.value.reason == "unknown_type"
    assert "run_paused" in info.value.detail


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("run_id",), "has.dots", "run_id"),
        (("workflow",), "two words", "workflow"),
        (("attempt",), -1, "attempt"),
        (("body", "timeout_seconds"), 0, "body.timeout_seconds"),
        (("body", "side_effect"), "delete", "body.side_effect"),
        (("body", "input"), ["not", "an", "object"], "body.input"),
    ],
)
def test_an_invalid_field_is_reported_as_invalid_naming_the_field(
    path: tuple[str, ...], value: object, named: str, sample_event: Callable[[str], Message]
):
    doc = as_doc(sample_event("step_scheduled"))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    with pytest.raises(ContractViolation) as info:
        decode_event(json.dumps(doc).encode())

    assert info.value.reason == "invalid"
    assert named in info.value.detail
    with pytest.raises(ContractViolation) as info:
        decode(StepScheduled, json.dumps(doc).encode())
    assert info.value.reason == "invalid"


def test_a_missing_required_field_is_invalid(sample_event: Callable[[str], Message]):
    doc = as_doc(sample_event("run_started"))
    del doc["body"]["trigger_id"]

    with pytest.raises(ContractViolation) as info:
        decode_event(json.dumps(doc).encode())

    assert info.value.reason == "invalid"
    assert "trigger_id" in info.value.detail


def test_a_message_over_the_size_limit_is_too_large_before_it_is_parsed(sample_event: Callable[[str], Message]):
    data = encode(sample_event("run_started"))

    assert decode_event(data, max_bytes=len(data)) == sample_event("run_started")
    with pytest.raises(ContractViolation) as info:
        decode_event(data, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    assert str(len(data)) in info.value.detail
    with pytest.raises(ContractViolation) as info:
        decode(RunStarted, data, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    # Size is checked first: an oversized message is too_large even when it is not JSON at all.
    with pytest.raises(ContractViolation) as info:
        decode_event(b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 1))
    assert info.value.reason == "too_large"


def test_an_event_with_unknown_extra_fields_still_decodes(sample_event: Callable[[str], Message]):
    event = sample_event("step_succeeded")
    doc = as_doc(event)
    doc["added_by_a_newer_keel"] = {"anything": [1, 2]}
    doc["body"]["new_body_field"] = "ignored"

    decoded = decode_event(json.dumps(doc).encode())

    assert decoded == event
    assert "added_by_a_newer_keel" not in decoded.model_dump()


def test_contract_violation_message_carries_reason_and_detail():
    exc = ContractViolation("invalid", "run_id: bad")
    assert isinstance(exc, ValueError)
    assert (exc.reason, exc.detail) == ("invalid", "run_id: bad")
    assert str(exc) == "invalid: run_id: bad"
