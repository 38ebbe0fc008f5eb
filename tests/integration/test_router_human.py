"""Deciders and human input on a real nats-server: an undeclared, incomplete or unsure decision lands in
needs_human with no write attempted; a person's input is validated before the run continues."""

import pytest

from keel_cli.client import KeelError
from keel_executor.tools.demo import ledger_counts
from tests.conftest import StackFactory
from tests.integration.router_kit import events_of, keel_cli, reaches, types

pytestmark = pytest.mark.integration


async def test_a_declared_intent_with_a_valid_payload_reaches_the_write(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("triage", {"text": "please refund me"}, "triage-ok", wait=True)
        assert answer.status == "done", stack.logs()
        timeline = await keel.timeline(answer.run_id)
    route = next(e for e in events_of(timeline, "route_decided") if e.body.kind == "decide")
    assert "intent 'refund'" in route.body.why and "options[0].payload_schema" in route.body.why
    assert route.body.writes["steps.classify"] == {"intent": "refund", "payload": {"amount": 5}, "confidence": 0.95}
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("launch the rockets", "intent"),  # an intent the step does not declare
        ("incomplete request", "payload.amount"),  # a declared intent without a required field
        ("maybe a refund?", "intent"),  # confidence below min_confidence
        ("something else entirely", "intent"),  # no rule matched: the decider is unsure
    ],
)
async def test_a_decision_the_router_cannot_accept_parks_in_needs_human_and_no_write_is_attempted(
    keel_stack: StackFactory, text: str, missing: str
) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("triage", {"text": text}, f"triage-{missing}-{len(text)}")
        view = await reaches(keel, answer.run_id, "needs_human")
        assert view.current_step == "classify" and f"missing {missing}" in view.reason
        timeline = await keel.timeline(answer.run_id)
    (asked,) = events_of(timeline, "human_input_requested")
    assert asked.body.kind == "decide" and asked.body.missing == missing
    assert "post" not in [e.step_id for e in events_of(timeline, "step_scheduled")]
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 0, "effects": 0}


async def test_a_person_settles_a_parked_decision_and_invalid_input_is_refused_first(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("triage", {"text": "launch the rockets"}, "triage-human")
        await reaches(keel, answer.run_id, "needs_human")

        refused = await keel.human_input(answer.run_id, {"intent": "refund", "payload": {}}, submitted_by="ops")
        assert not refused.accepted and any("payload.amount" in p for p in refused.problems)
        assert (await keel.run(answer.run_id)).status == "needs_human"

        accepted = await keel.human_input(
            answer.run_id, {"intent": "refund", "payload": {"amount": 7}}, submitted_by="ops"
        )
        assert accepted.accepted and accepted.step_id == "classify"
        await reaches(keel, answer.run_id, "done")
        timeline = await keel.timeline(answer.run_id)
    assert types(timeline).count("human_input_rejected") == 1
    post = next(e for e in events_of(timeline, "step_scheduled") if e.step_id == "post")
    assert post.body.input == {"account": "triage", "amount": 7}
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_a_human_step_parks_with_its_prompt_and_continues_with_validated_input(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("review", {"customer": "ACME"}, "review-1")
        view = await reaches(keel, answer.run_id, "needs_human")
        assert view.current_step == "ask" and "queue ops" in view.reason
        (asked,) = events_of(await keel.timeline(answer.run_id), "human_input_requested")
        assert asked.body.prompt == "How much should be posted for ACME?"
        assert asked.body.context["input"] == {"customer": "ACME"}

        refused = await keel.human_input(answer.run_id, {"amount": "lots"}, submitted_by="ops")
        assert not refused.accepted and refused.problems == ["input.amount: 'lots' is not of type 'integer'"]
        with pytest.raises(KeelError, match="no run"):
            await keel.human_input("rnosuchrun", {"amount": 1}, submitted_by="ops")

        assert (await keel.human_input(answer.run_id, {"amount": 3}, submitted_by="ops")).accepted
        await reaches(keel, answer.run_id, "done")
        timeline = await keel.timeline(answer.run_id)
    (received,) = events_of(timeline, "human_input_received")
    assert received.body.submitted_by == "ops" and received.body.input == {"amount": 3}
    assert ledger_counts(stack.ledger_url, answer.run_id) == {"invocations": 1, "effects": 1}


async def test_input_for_a_run_that_is_not_waiting_for_it_is_refused(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("demo", {}, "not-parked", wait=True)
        refused = await keel.human_input(answer.run_id, {"x": 1}, submitted_by="ops")
    assert not refused.accepted and "not waiting for human input" in refused.problems[0]


async def test_keel_run_input_and_cancel_from_the_command_line(keel_stack: StackFactory) -> None:
    stack = await keel_stack()
    async with await stack.client() as keel:
        answer = await keel.trigger("review", {"customer": "ACME"}, "review-cli")
        await reaches(keel, answer.run_id, "needs_human")
        code, _, err = await keel_cli("run", "input", answer.run_id, "--json", '{"amount": "x"}', url=stack.nats_url)
        assert code == 1 and "input.amount: 'x' is not of type 'integer'" in err
        code, out, _ = await keel_cli(
            "run", "input", answer.run_id, "--json", '{"amount": 2}', "--by", "ops", url=stack.nats_url
        )
        assert code == 0 and "input accepted for step ask" in out
        await reaches(keel, answer.run_id, "done")

        parked = await keel.trigger("review", {"customer": "Globex"}, "review-cli-cancel")
        await reaches(keel, parked.run_id, "needs_human")
        code, out, _ = await keel_cli("run", "cancel", parked.run_id, "--reason", "duplicate", url=stack.nats_url)
        assert code == 0 and "cancelled" in out and "duplicate" in out
        code, out, _ = await keel_cli("runs", "--state", "cancelled", url=stack.nats_url)
        assert parked.run_id in out
