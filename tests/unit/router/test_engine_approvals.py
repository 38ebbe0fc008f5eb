"""Approval gates in the engine: approval steps, gates the policy inserts, payload binding, decisions."""

from __future__ import annotations

import pytest
from engine_parking_kit import cancel, decision
from router_testkit import RunLog, succeeded, workflow

from keel_contracts.approvals import ApprovalRequested, ApprovalWithdrawn, payload_hash
from keel_contracts.attempts import execute_step_for
from keel_contracts.events import RouteDecided, RunCancelled, RunCompleted, RunFailed, StepScheduled
from keel_contracts.runs import RunStatus
from keel_router.engine import Engine
from keel_router.workflow import Policy, Workflow
from keel_shared.decisions import proof_problem
from keel_shared.triggers import build_trigger
from tests.conftest import TEST_DECISION_SIGNER, trusting

REFUND = workflow(
    """
    name: refund
    steps:
      - id: get_charge
        kind: tool
        tool: billing.get_charge
        input: {charge_id: "${input.charge_id}"}
      - id: approve
        kind: approval
        role: finance
        approves: refund
        summary: "Refund ${input.amount} of ${input.charge_id}"
        expires_after_seconds: 3600
        escalate_to: lead
        on_reject: rejected
        next: refund
      - id: lead
        kind: approval
        role: finance
        approves: refund
        escalate_to: expired
        next: refund
      - id: refund
        kind: tool
        tool: billing.refund
        side_effect: write
        action_class: [money]
        input: {charge_id: "${input.charge_id}", amount: "${input.amount}", email: "${steps.get_charge.email}"}
        next: done
      - {id: done, kind: succeed, output: {refund: "${steps.refund}"}}
      - {id: rejected, kind: fail, error: rejected}
      - {id: expired, kind: fail, error: expired}
    """
)

UNGATED_WRITE = workflow(
    """
    name: grant
    steps:
      - id: grant
        kind: tool
        tool: access.grant
        side_effect: write
        action_class: [access, customer]
        input: {user: "${input.user}"}
    """
)


def start(engine: Engine, log: RunLog, wf: Workflow, make_trigger, data: dict) -> None:
    log.append(engine.on_trigger(None, make_trigger(wf.name, data), wf))


def to_approval(engine: Engine, log: RunLog, make_trigger) -> ApprovalRequested:
    start(engine, log, REFUND, make_trigger, {"charge_id": "ch_1", "amount": 500})
    log.append([succeeded(log.run, {"email": "ada@example.com"})])
    (request,) = log.append(engine.advance(log.run, REFUND, None))
    assert isinstance(request, ApprovalRequested)
    return request


def test_an_approval_step_requests_the_exact_rendered_payload_of_the_write_it_gates(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)

    body = request.body
    assert body.approves_step == "refund" and body.roles == ["finance"] and request.step_id == "approve"
    assert body.payload == {"charge_id": "ch_1", "amount": 500, "email": "ada@example.com"}
    assert body.payload_hash == payload_hash(body.payload)
    assert body.summary == "Refund 500 of ch_1"
    assert body.escalate_to == "lead"
    assert body.target.system == "billing" and body.target.operation == "refund"
    assert body.expires_at > request.occurred_at
    assert run_log.run.status is RunStatus.NEEDS_APPROVAL
    assert engine.effects(run_log.run) == []  # nothing runs while the run waits for a person


def test_the_approval_names_who_triggered_the_run_as_its_requester(engine, run_log):
    trigger = build_trigger("refund", {"charge_id": "ch_1", "amount": 500}, "order-1", source="test", actor="ada")
    run_log.append(engine.on_trigger(None, trigger, REFUND))
    run_log.append([succeeded(run_log.run, {"email": "ada@example.com"})])
    (request,) = run_log.append(engine.advance(run_log.run, REFUND, None))

    assert isinstance(request, ApprovalRequested)
    # The approval service refuses a decision by the requester: ada may not approve her own refund.
    assert request.body.requested_by == "ada"


def test_a_grant_runs_the_write_with_the_approval_id_and_hash_in_its_attempt(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)
    assert engine.advance(run_log.run, REFUND, None) == []  # no decision yet

    run_log.append([decision(run_log.run, request, "granted")])
    route, scheduled = run_log.append(engine.advance(run_log.run, REFUND, None))

    assert isinstance(route, RouteDecided) and route.body.kind == "approval" and route.body.to_step == "refund"
    assert "granted by alice@example.com" in route.body.why
    assert route.body.writes["steps.approve"]["status"] == "granted"
    assert isinstance(scheduled, StepScheduled) and scheduled.step_id == "refund"
    assert scheduled.body.approval_ids == [request.body.approval_id]
    attempt = execute_step_for(scheduled)  # what the executor runs
    assert attempt.body.approval_id == request.body.approval_id
    assert attempt.body.approved_payload_hash == request.body.payload_hash == payload_hash(attempt.body.input)
    # The signed grant travels with the write, so the executor can verify it right before sending it.
    (proof,) = attempt.body.grants
    assert (proof.approval_id, proof.approves_step, proof.payload_hash) == (
        request.body.approval_id,
        "refund",
        payload_hash(attempt.body.input),
    )
    assert proof_problem(trusting(TEST_DECISION_SIGNER), proof) is None
    run_log.append([succeeded(run_log.run, {"refund_id": "re_1"})])
    (done,) = run_log.append(engine.advance(run_log.run, REFUND, None))
    assert isinstance(done, RunCompleted) and done.body.output == {"refund": {"refund_id": "re_1"}}


def test_a_denial_goes_to_on_reject_with_the_reason_recorded(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)
    run_log.append([decision(run_log.run, request, "denied", reason="duplicate refund")])

    route, failed = run_log.append(engine.advance(run_log.run, REFUND, None))

    assert route.body.to_step == "rejected" and "duplicate refund" in route.body.why
    assert isinstance(failed, RunFailed) and "rejected" in failed.body.reason
    assert not any(isinstance(e, StepScheduled) and e.step_id == "refund" for _, e in run_log.events)


def test_an_expired_request_escalates_to_the_next_approval_which_asks_again(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)
    run_log.append([decision(run_log.run, request, "expired")])

    route, again = run_log.append(engine.advance(run_log.run, REFUND, None))

    assert route.body.to_step == "lead" and "expired" in route.body.why
    assert isinstance(again, ApprovalRequested) and again.step_id == "lead"
    assert again.body.approval_id != request.body.approval_id
    assert run_log.run.status is RunStatus.NEEDS_APPROVAL


def test_a_grant_that_binds_to_another_payload_does_not_unlock_the_write(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)
    run_log.append([decision(run_log.run, request, "granted", payload_hash="sha256:" + "0" * 64)])

    out = run_log.append(engine.advance(run_log.run, REFUND, None))

    # The approval step moves on, but the write's own gate finds no grant of its payload and asks again.
    assert isinstance(out[-1], ApprovalRequested) and out[-1].step_id == "refund"
    assert not any(isinstance(e, StepScheduled) for e in out)
    assert "binds to another payload" in out[-1].body.reason


def test_the_policy_gates_a_write_that_has_no_approval_step_one_role_at_a_time(engine, run_log, make_trigger):
    start(engine, run_log, UNGATED_WRITE, make_trigger, {"user": "ada"})
    (first,) = [e for _, e in run_log.events if isinstance(e, ApprovalRequested)]
    assert first.step_id == "grant" and first.body.roles == ["security"]
    assert "policy requires approval" in first.body.reason and first.body.escalate_to is None

    run_log.append([decision(run_log.run, first, "granted")])
    route, second = run_log.append(engine.advance(run_log.run, UNGATED_WRITE, None))
    assert route.body.to_step == "grant"
    assert isinstance(second, ApprovalRequested) and second.body.roles == ["support_lead"]

    run_log.append([decision(run_log.run, second, "granted", by="bob@example.com")])
    _, scheduled = run_log.append(engine.advance(run_log.run, UNGATED_WRITE, None))
    assert isinstance(scheduled, StepScheduled)
    assert scheduled.body.approval_ids == [first.body.approval_id, second.body.approval_id]


def test_a_policy_that_lists_no_class_of_the_write_lets_it_run_ungated(run_log, make_trigger):
    engine = Engine(fixed_clock, policy=Policy(require_approval={}))
    start(engine, run_log, UNGATED_WRITE, make_trigger, {"user": "ada"})

    assert [e.type for _, e in run_log.events] == ["run_started", "step_scheduled"]


def fixed_clock():
    from router_testkit import T0

    return T0


def test_a_denied_policy_gate_fails_the_run_without_running_the_write(engine, run_log, make_trigger):
    start(engine, run_log, UNGATED_WRITE, make_trigger, {"user": "ada"})
    first = run_log.events[-1][1]
    run_log.append([decision(run_log.run, first, "denied", reason="not on the team")])

    (failed,) = run_log.append(engine.advance(run_log.run, UNGATED_WRITE, None))

    assert isinstance(failed, RunFailed) and "not on the team" in failed.body.reason
    assert run_log.run.attempts == ()


@pytest.mark.parametrize("kind", ["granted", "denied"])
def test_a_second_decision_on_the_same_approval_changes_nothing(engine, run_log, make_trigger, kind):
    request = to_approval(engine, run_log, make_trigger)
    run_log.append([decision(run_log.run, request, kind)])
    run_log.append(engine.advance(run_log.run, REFUND, None))
    before = run_log.run

    run_log.append([decision(run_log.run, request, "denied" if kind == "granted" else "granted")])

    assert run_log.run.approvals == before.approvals
    assert engine.advance(run_log.run, REFUND, None) == []


def test_a_grant_is_used_once_a_loop_back_to_the_write_needs_a_new_approval(engine, run_log, make_trigger):
    loop = workflow(
        """
        name: loop
        steps:
          - id: pay
            kind: tool
            tool: billing.pay
            side_effect: write
            action_class: [money]
            input: {amount: 1}
          - id: again
            kind: choice
            choices:
              - {variable: steps.pay.more, equals: true, next: pay}
            default: done
          - {id: done, kind: succeed}
        """
    )
    start(engine, run_log, loop, make_trigger, {})
    request = run_log.events[-1][1]
    run_log.append([decision(run_log.run, request, "granted")])
    run_log.append(engine.advance(run_log.run, loop, None))
    run_log.append([succeeded(run_log.run, {"more": True})])

    route, asked = run_log.append(engine.advance(run_log.run, loop, None))

    assert route.body.kind == "choice"
    assert isinstance(asked, ApprovalRequested) and asked.body.approval_id != request.body.approval_id


def test_cancelling_a_run_that_waits_for_an_approval_withdraws_the_request(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)

    events = engine.with_withdrawals(run_log.run, engine.on_cancel(run_log.run, cancel(run_log.run)))
    run_log.append(events)

    cancelled, withdrawn = events
    assert isinstance(cancelled, RunCancelled)
    assert isinstance(withdrawn, ApprovalWithdrawn)
    assert withdrawn.body.approval_id == request.body.approval_id
    assert withdrawn.body.because == "run_cancelled" and withdrawn.causation_id == cancelled.id
    assert run_log.run.approval(request.body.approval_id).status == "withdrawn"
    # A grant that still arrives (decided before the withdrawal reached the inbox) unlocks nothing.
    run_log.append([decision(run_log.run, request, "granted")])
    assert run_log.run.status is RunStatus.CANCELLED
    assert engine.advance(run_log.run, REFUND, None) == []


def test_a_run_that_ends_with_nothing_pending_withdraws_nothing(engine, run_log, make_trigger):
    request = to_approval(engine, run_log, make_trigger)
    run_log.append([decision(run_log.run, request, "denied", reason="no")])
    events = engine.with_withdrawals(run_log.run, engine.advance(run_log.run, REFUND, None))

    assert [type(e) for e in events] == [RouteDecided, RunFailed]
