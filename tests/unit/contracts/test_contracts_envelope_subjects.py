"""Run ids derived from intents, and the subject tokens every NATS name is built from."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keel_contracts import subjects as s
from keel_contracts import timers
from keel_contracts.commands import TriggerRun, TriggerRunBody
from keel_contracts.envelope import run_id_for
from keel_contracts.runs import PARKED_STATES, TERMINAL_STATES, RunStatus

INVALID_TOKENS = ["a.b", "two words", "*", ">", "", "x" * 129, "tab\t", "new\n", "ünïcode", "a/b"]


def test_run_id_for_is_deterministic():
    assert run_id_for("acme", "orders", "order-1") == run_id_for("acme", "orders", "order-1")


@pytest.mark.parametrize(
    "other",
    [("globex", "orders", "order-1"), ("acme", "refunds", "order-1"), ("acme", "orders", "order-2")],
    ids=["tenant", "workflow", "intent-key"],
)
def test_run_id_for_differs_by_tenant_workflow_and_intent_key(other: tuple[str, str, str]):
    assert run_id_for(*other) != run_id_for("acme", "orders", "order-1")


def test_run_id_for_does_not_confuse_where_one_field_ends_and_the_next_begins():
    assert run_id_for("ab", "c", "k") != run_id_for("a", "bc", "k")
    assert run_id_for("t", "wf", "a") != run_id_for("t", "w", "fa")


@pytest.mark.parametrize("key", ["order-1", "with.dots and spaces * >", "ü" * 300, "\x1f"])
def test_run_id_for_is_a_valid_subject_token_whatever_the_intent_key(key: str):
    run_id = run_id_for("acme", "orders", key)
    assert s.token(run_id, "run id") == run_id
    assert len(run_id) == 26
    assert run_id.startswith("r")


@pytest.mark.parametrize("value", INVALID_TOKENS)
def test_token_rejects_anything_that_is_not_exactly_one_subject_token(value: str):
    with pytest.raises(s.InvalidToken, match="workflow"):
        s.token(value, "workflow")


@pytest.mark.parametrize("value", ["a", "order_1-B", "x" * 128])
def test_token_accepts_letters_digits_underscore_and_dash(value: str):
    assert s.token(value, "workflow") == value


@pytest.mark.parametrize("field", ["run_id", "workflow", "tenant", "step_id"])
@pytest.mark.parametrize("value", ["a.b", "a b", "*", ">"])
def test_message_envelope_refuses_tokens_that_would_break_its_subjects(field: str, value: str):
    fields = {
        "run_id": "r-1",
        "workflow": "orders",
        "tenant": "acme",
        "step_id": "charge",
        "correlation_id": "c",
        "actor": "cli",
        "dedupe_key": "d",
        field: value,
    }
    with pytest.raises(ValidationError, match=field):
        TriggerRun(**fields, body=TriggerRunBody(intent_key="k", source="cli", input={}))


def test_event_subjects_parse_back_into_their_parts():
    subject = s.event_subject("orders", "r-1", s.EXECUTOR, "step_succeeded")

    assert subject == "keel.run.orders.r-1.executor.step_succeeded"
    assert s.parse_event_subject(subject) == ("orders", "r-1", "executor", "step_succeeded")
    assert s.live_subject(subject) == "keel.live.run.orders.r-1.executor.step_succeeded"


@pytest.mark.parametrize(
    "subject",
    ["keel.run.orders.r-1.executor", "keel.cmd.orders.r-1.executor.x", "keel.run.a.b.r-1.executor.x", "other"],
)
def test_parse_event_subject_rejects_anything_else(subject: str):
    with pytest.raises(ValueError, match="not a run event subject"):
        s.parse_event_subject(subject)


def test_subject_helpers_build_the_documented_names():
    assert s.run_filter("orders", "r-1") == "keel.run.orders.r-1.>"
    assert s.any_workflow_run_filter("r-1") == "keel.run.*.r-1.>"
    assert s.workflow_filter("orders") == "keel.run.orders.>"
    assert s.emitter_filter("router") == "keel.run.*.*.router.*"
    assert s.trigger_subject("webhook") == "keel.trigger.webhook"
    assert s.event_type_filter("router", "step_scheduled") == "keel.run.*.*.router.step_scheduled"
    assert s.dlq_subject("router", "invalid") == "keel.dlq.router.invalid"
    assert timers.schedule_subject("orders", "r-1", "retry-a-2") == "keel.timer.sched.orders.r-1.retry-a-2"
    assert timers.fire_subject("orders", "r-1", "retry-a-2") == "keel.timer.fire.orders.r-1.retry-a-2"


def test_run_status_terminal_and_parked_sets():
    assert (
        {st for st in RunStatus if st.terminal}
        == TERMINAL_STATES
        == {
            RunStatus.DONE,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
    )
    assert {st for st in RunStatus if st.parked} == PARKED_STATES
    assert not TERMINAL_STATES & PARKED_STATES
    assert not RunStatus.RETRYING.terminal and not RunStatus.RETRYING.parked
