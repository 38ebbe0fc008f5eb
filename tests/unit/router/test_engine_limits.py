"""Size limits in the engine: a tool's rendered input over max_payload_bytes, a payload to approve over the
approval limit and run data over max_run_data_bytes each block the run with the limit in its reason,
before anything is sent or anyone is asked."""

from __future__ import annotations

from router_testkit import T0, RunLog, succeeded, workflow

from keel_contracts.events import ApprovalRequested, RunBlocked, StepScheduled
from keel_contracts.runs import RunStatus
from keel_router.engine import Engine
from keel_router.workflow import Policy
from keel_router.workflow.policy import Limits

COPY = workflow(
    """
    name: copy
    steps:
      - {id: fetch, kind: tool, tool: demo.echo}
      - {id: send, kind: tool, tool: demo.echo, input: {body: "${steps.fetch.body}"}}
    """
)

GATED = workflow(
    """
    name: gated
    steps:
      - {id: fetch, kind: tool, tool: demo.echo}
      - {id: approve, kind: approval, role: finance, approves: pay, escalate_to: late, next: pay}
      - id: pay
        kind: tool
        tool: billing.refund
        side_effect: write
        action_class: [money]
        input: {note: "${steps.fetch.note}"}
        next: done
      - {id: done, kind: succeed}
      - {id: late, kind: fail, error: expired}
    """
)


def engine_with(**limits: int) -> Engine:
    approval_limit = limits.pop("approval", 64 * 1024)
    return Engine(lambda: T0, policy=Policy(limits=Limits(**limits)), max_approval_payload_bytes=approval_limit)


def after_first_step(engine: Engine, make_trigger, wf, output: dict) -> RunLog:
    log = RunLog()
    log.append(engine.on_trigger(None, make_trigger(wf.name, {}), wf))
    log.append([succeeded(log.run, output)])
    return log


def test_a_tool_input_over_max_payload_bytes_blocks_the_run_and_nothing_is_sent(make_trigger):
    engine = engine_with(max_payload_bytes=1000)
    log = after_first_step(engine, make_trigger, COPY, {"body": "x" * 2000})

    (blocked,) = log.append(engine.advance(log.run, COPY, None))

    assert isinstance(blocked, RunBlocked) and blocked.body.cap == "max_payload_bytes"
    assert blocked.body.limit == 1000 and blocked.body.value > 2000
    assert blocked.body.reason.startswith("limit max_payload_bytes exceeded: the input of send is ")
    assert blocked.body.reason.endswith("bytes, limit 1000; not starting step send")
    assert log.run.status is RunStatus.BLOCKED and engine.effects(log.run) == []


def test_a_payload_to_approve_over_the_approval_limit_blocks_the_run_instead_of_asking(make_trigger):
    engine = engine_with(approval=1024)
    log = after_first_step(engine, make_trigger, GATED, {"note": "n" * 1500})

    (blocked,) = log.append(engine.advance(log.run, GATED, None))

    assert isinstance(blocked, RunBlocked) and blocked.body.cap == "max_approval_payload_bytes"
    assert blocked.step_id == "approve" and blocked.body.limit == 1024
    assert "the payload of pay to approve is" in blocked.body.reason
    assert blocked.body.reason.endswith("limit 1024 (KEEL_MAX_APPROVAL_PAYLOAD_BYTES); not asking for approval of pay")
    assert not any(isinstance(e, ApprovalRequested | StepScheduled) and e.step_id != "fetch" for _, e in log.events)


def test_a_payload_within_the_approval_limit_is_asked_for(make_trigger):
    engine = engine_with(approval=1024)
    log = after_first_step(engine, make_trigger, GATED, {"note": "n" * 900})

    (request,) = log.append(engine.advance(log.run, GATED, None))

    assert isinstance(request, ApprovalRequested) and request.body.payload == {"note": "n" * 900}


def test_run_data_over_max_run_data_bytes_blocks_the_run_before_its_next_step(make_trigger):
    engine = engine_with(max_run_data_bytes=1500)
    log = after_first_step(engine, make_trigger, COPY, {"body": "b" * 2000})

    (blocked,) = log.append(engine.advance(log.run, COPY, None))

    assert isinstance(blocked, RunBlocked) and blocked.body.cap == "max_run_data_bytes"
    assert blocked.body.reason.startswith("limit max_run_data_bytes exceeded: run data is ")
    assert blocked.body.reason.endswith("bytes, limit 1500; not starting step send")


def test_a_gate_the_policy_inserts_is_bound_by_the_approval_limit_too(make_trigger):
    ungated = workflow(
        """
        name: ungated
        steps:
          - {id: fetch, kind: tool, tool: demo.echo}
          - {id: pay, kind: tool, tool: billing.refund, side_effect: write, action_class: [money],
             input: {note: "${steps.fetch.note}"}}
        """
    )
    engine = engine_with(approval=1024)
    log = after_first_step(engine, make_trigger, ungated, {"note": "n" * 1500})

    (blocked,) = log.append(engine.advance(log.run, ungated, None))

    assert isinstance(blocked, RunBlocked) and blocked.body.cap == "max_approval_payload_bytes"
    assert blocked.step_id == "pay" and blocked.body.reason.endswith("not asking for approval of pay")
