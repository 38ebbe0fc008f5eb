"""Building triggers (run id derived from the intent) and finding the run a refused message was about."""

from __future__ import annotations

import pytest

from keel_contracts import subjects as s
from keel_contracts.commands import TriggerRun
from keel_contracts.envelope import run_id_for
from keel_shared.deadletters import run_id_from_subject
from keel_shared.triggers import build_trigger


def test_build_trigger_derives_the_run_id_from_tenant_workflow_and_intent_key():
    trig = build_trigger("orders", {"n": 1}, "order-1", source="webhook", tenant="acme")

    assert isinstance(trig, TriggerRun)
    assert trig.run_id == run_id_for("acme", "orders", "order-1")
    assert (trig.workflow, trig.tenant) == ("orders", "acme")
    assert trig.body.intent_key == "order-1"
    assert trig.body.source == "webhook"
    assert trig.body.input == {"n": 1}
    assert trig.actor == "trigger:webhook"
    assert trig.correlation_id == trig.id
    assert trig.dedupe_key == f"trigger:webhook:{trig.id}"


def test_two_triggers_for_the_same_intent_name_the_same_run_but_are_distinct_messages():
    first = build_trigger("orders", {}, "order-1")
    second = build_trigger("orders", {"other": True}, "order-1")

    assert first.run_id == second.run_id
    assert first.id != second.id
    assert first.dedupe_key != second.dedupe_key


@pytest.mark.parametrize(
    "other",
    [
        {"workflow": "refunds", "intent_key": "order-1"},
        {"workflow": "orders", "intent_key": "order-2"},
        {"workflow": "orders", "intent_key": "order-1", "tenant": "globex"},
    ],
    ids=["workflow", "intent-key", "tenant"],
)
def test_a_different_workflow_intent_or_tenant_names_a_different_run(other: dict):
    kwargs = dict(other)
    workflow = kwargs.pop("workflow")
    assert build_trigger(workflow, {}, **kwargs).run_id != build_trigger("orders", {}, "order-1").run_id


def test_without_an_intent_key_every_trigger_is_its_own_intent():
    first = build_trigger("orders", {})
    second = build_trigger("orders", {})

    assert first.body.intent_key == f"trigger-{first.id}"
    assert first.run_id != second.run_id
    assert first.run_id == run_id_for("default", "orders", first.body.intent_key)


def test_a_given_trigger_id_makes_the_trigger_reproducible():
    first = build_trigger("orders", {}, trigger_id="t-42")
    again = build_trigger("orders", {}, trigger_id="t-42")

    assert (first.id, first.run_id, first.dedupe_key) == (again.id, again.run_id, again.dedupe_key)
    assert first.body.intent_key == "trigger-t-42"


@pytest.mark.parametrize("workflow", ["a.b", "two words", "*", ">", ""])
def test_an_invalid_workflow_token_is_refused(workflow: str):
    with pytest.raises(s.InvalidToken, match="workflow"):
        build_trigger(workflow, {}, "k")


@pytest.mark.parametrize("source", ["web.hook", "*"])
def test_an_invalid_source_token_is_refused(source: str):
    with pytest.raises(s.InvalidToken, match="source"):
        build_trigger("orders", {}, "k", source=source)


@pytest.mark.parametrize(
    ("subject", "run_id"),
    [
        ("keel.run.orders.r-1.router.run_started", "r-1"),
        ("keel.run.orders.r-1", "r-1"),
        ("keel.cmd.router.cancel.r-2", "r-2"),
        ("keel.trigger.cli", None),
        ("keel.dlq.router.invalid", None),
        ("keel.run.orders", None),
        ("keel.cmd.router.cancel", None),
        ("other.run.orders.r-1", None),
        ("", None),
    ],
)
def test_run_id_from_subject(subject: str, run_id: str | None):
    assert run_id_from_subject(subject) == run_id


def test_run_id_from_subject_finds_the_run_of_every_subject_keel_builds():
    assert run_id_from_subject(s.event_subject("orders", "r-9", s.ROUTER, "run_started")) == "r-9"
    assert run_id_from_subject(s.router_cancel_subject("r-9")) == "r-9"
    assert run_id_from_subject(s.router_input_subject("r-9")) == "r-9"
