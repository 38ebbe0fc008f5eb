"""Decider answers, human input and wait deadlines, as the router checks them."""

from datetime import UTC, datetime, timedelta

import pytest
from workflow_testkit import EXAMPLES

from keel_router.workflow import (
    DecideStep,
    DecisionAccepted,
    DecisionNeedsHuman,
    HumanStep,
    Policy,
    RunDataError,
    ToolStep,
    WaitStep,
    catch_writes,
    check_decision,
    check_human_input,
    load_workflow,
    load_workflow_text,
    make_context,
    match_catcher,
    resolve_wait,
)

SLACK = load_workflow(EXAMPLES / "slack_to_ticket.yaml")


def _classify() -> DecideStep:
    step = SLACK.step("classify")
    assert isinstance(step, DecideStep)
    return step


CLASSIFY = _classify()


def test_declared_intent_with_valid_payload_is_accepted_and_routed() -> None:
    payload = {"title": "Printer on fire", "priority": "urgent"}
    out = check_decision(SLACK, CLASSIFY, intent="create_ticket", payload=payload, confidence=0.9)
    assert out == DecisionAccepted(
        "create_ticket",
        payload,
        "lookup_contact",
        {"intent": "create_ticket", "payload": payload, "confidence": 0.9},
    )
    ignore = check_decision(SLACK, CLASSIFY, intent="ignore", payload={}, confidence=0.8)
    assert isinstance(ignore, DecisionAccepted) and ignore.next_step == "ignored"


@pytest.mark.parametrize(
    ("kwargs", "missing", "needle"),
    [
        ({"intent": "delete_everything", "payload": {}, "confidence": 1.0}, "intent", "is not declared"),
        ({"intent": None, "payload": {}, "confidence": 1.0}, "intent", "unsure"),
        ({"intent": "create_ticket", "payload": {}, "unsure": True, "confidence": 1.0}, "intent", "unsure"),
        ({"intent": "ignore", "payload": {}, "confidence": 0.5}, "intent", "below min_confidence 0.7"),
        ({"intent": "ignore", "payload": {}}, "intent", "confidence none"),
        (
            {"intent": "create_ticket", "payload": {"priority": "low"}, "confidence": 0.9},
            "payload.title",
            "required field is missing",
        ),
        (
            {
                "intent": "create_ticket",
                "payload": {"title": "Hi there", "priority": "meh"},
                "confidence": 0.9,
            },
            "payload.priority",
            "is not one of",
        ),
        (
            {
                "intent": "create_ticket",
                "payload": {"title": "ok!", "priority": "low", "x": 1},
                "confidence": 0.9,
            },
            "payload",
            "Additional properties",
        ),
    ],
)
def test_decisions_that_must_not_reach_a_write_go_to_a_human(
    kwargs: dict[str, object], missing: str, needle: str
) -> None:
    out = check_decision(SLACK, CLASSIFY, **kwargs)  # type: ignore[arg-type]
    assert isinstance(out, DecisionNeedsHuman)
    assert out.missing == missing and needle in out.reason


def test_oversized_decision_payload_is_refused() -> None:
    policy = Policy.model_validate({"limits": {"max_payload_bytes": 40}})
    payload = {"title": "x" * 100, "priority": "low"}
    out = check_decision(SLACK, CLASSIFY, intent="create_ticket", payload=payload, confidence=1, policy=policy)
    assert isinstance(out, DecisionNeedsHuman) and "max_payload_bytes" in out.reason


def test_human_input_is_validated_against_the_step_schema() -> None:
    step = load_workflow(EXAMPLES / "refund.yaml").step("needs_review")
    assert isinstance(step, HumanStep)
    assert check_human_input(step, {"resolution": "not_refundable"}) == []
    problems = check_human_input(step, {"resolution": "whatever"})
    assert [p.path for p in problems] == ["input.resolution"]
    assert [str(p) for p in check_human_input(step, {})] == ["input.resolution: required field is missing"]


WAITS = """\
name: w
steps:
  - {id: pause, kind: wait, seconds: 90}
  - {id: until, kind: wait, until: "${input.not_before}"}
"""


def test_wait_seconds_and_until() -> None:
    wf = load_workflow_text(WAITS)
    pause, until = wf.steps
    assert isinstance(pause, WaitStep) and isinstance(until, WaitStep)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ctx = make_context(
        trigger_input={"not_before": "2026-02-01T09:00:00+01:00"}, run_id="r", workflow="w", intent_key="k"
    )
    assert resolve_wait(pause, ctx, now) == now + timedelta(seconds=90)
    assert resolve_wait(until, ctx, now) == datetime(2026, 2, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "needle"),
    [("tomorrow", "not an ISO 8601"), ("2026-02-01T09:00:00", "no UTC"), (5, "needs an ISO 8601")],
)
def test_wait_until_with_unusable_data_names_the_path(value: object, needle: str) -> None:
    until = load_workflow_text(WAITS).steps[1]
    assert isinstance(until, WaitStep)
    ctx = make_context(trigger_input={"not_before": value}, run_id="r", workflow="w", intent_key="k")
    with pytest.raises(RunDataError, match=needle) as info:
        resolve_wait(until, ctx, datetime.now(UTC))
    assert info.value.path == "input.not_before"


def test_wait_needs_exactly_one_of_seconds_or_until() -> None:
    from workflow_testkit import problems_of

    assert problems_of("name: w\nsteps:\n  - {id: p, kind: wait}\n") == [
        "wf.yaml:3:5: steps[0]: a wait needs exactly one of seconds or until"
    ]


def test_catcher_stores_the_error_and_the_minimum_safe_payload() -> None:
    step = SLACK.step("lookup_contact")
    assert isinstance(step, ToolStep)
    catcher = match_catcher(step.catch, "transient")
    assert catcher is not None and catcher.next == "create_ticket"
    ctx = make_context(trigger_input={"user_email": "ada@example.com"}, run_id="r", workflow="w", intent_key="k")
    error = {"error": "transient", "message": "CRM 503"}
    assert catch_writes(step, catcher, error, ctx) == {
        "errors.lookup_contact": error,
        "steps.lookup_contact": {"id": None, "name": "ada@example.com", "tier": "unknown"},
    }


def test_catcher_without_fallback_stores_only_the_error() -> None:
    step = load_workflow(EXAMPLES / "slack_to_ticket.yaml").step("create_ticket")
    assert isinstance(step, ToolStep)
    catcher = match_catcher(step.catch, "unknown_outcome")
    assert catcher is not None
    assert catch_writes(step, catcher, "boom", {}) == {"errors.create_ticket": "boom"}
    assert match_catcher(step.catch, "permanent") is None
