"""The policy file: approvals required by action class, and caps."""

import pytest
from workflow_testkit import EXAMPLES

from keel_router.workflow import (
    Policy,
    RunCounters,
    ToolStep,
    WorkflowError,
    check_caps,
    check_payload,
    load_policy_text,
    load_workflow,
    load_workflow_text,
    required_approval,
)
from keel_router.workflow.policy import DEFAULT_REQUIRE_APPROVAL, check_run_data

POLICY = """\
version: 1
require_approval:
  money: finance
  access: security
  customer: support_lead
caps:
  max_steps_per_run: 10
  max_total_attempts: 5
  max_run_duration_seconds: 3600
limits:
  max_payload_bytes: 64
"""


def tool(extra: str) -> ToolStep:
    wf = load_workflow_text("name: w\nsteps:\n  - {id: s, kind: tool, tool: t, " + extra + "}\n")
    step = wf.steps[0]
    assert isinstance(step, ToolStep)
    return step


def test_policy_file_loads() -> None:
    policy = load_policy_text(POLICY)
    assert policy.require_approval == {"money": "finance", "access": "security", "customer": "support_lead"}
    assert policy.caps.max_steps_per_run == 10 and policy.limits.max_payload_bytes == 64
    assert policy.limits.max_run_data_bytes == Policy().limits.max_run_data_bytes


def test_default_policy_gates_every_action_class() -> None:
    assert set(Policy().require_approval) == {"money", "access", "delete", "customer", "production"}
    assert Policy().require_approval == DEFAULT_REQUIRE_APPROVAL


def test_write_with_a_listed_action_class_needs_approval_even_without_an_approval_step() -> None:
    policy = load_policy_text(POLICY)
    need = required_approval(tool("side_effect: write, action_class: [money]"), policy)
    assert need is not None
    assert need.roles == ("finance",) and need.action_classes == ("money",)
    assert "money -> finance" in need.reason


def test_refund_example_needs_finance() -> None:
    wf = load_workflow(EXAMPLES / "refund.yaml")
    need = required_approval(wf.step("refund"), load_policy_text(POLICY))
    assert need is not None and need.roles == ("finance",)
    assert required_approval(wf.step("get_charge"), load_policy_text(POLICY)) is None


def test_several_classes_need_every_role_once() -> None:
    policy = load_policy_text(POLICY.replace("customer: support_lead", "customer: finance"))
    need = required_approval(tool("side_effect: write, action_class: [customer, money, access]"), policy)
    assert need is not None and need.roles == ("finance", "security")


def test_unlisted_classes_reads_and_plain_writes_need_nothing() -> None:
    policy = load_policy_text(POLICY)
    assert required_approval(tool("side_effect: write, action_class: [production]"), policy) is None
    assert required_approval(tool("side_effect: write"), policy) is None
    assert required_approval(tool("side_effect: read"), policy) is None


@pytest.mark.parametrize(
    ("counters", "cap"),
    [
        (RunCounters(steps_started=9, total_attempts=4, elapsed_seconds=3599), None),
        (RunCounters(steps_started=10, total_attempts=0, elapsed_seconds=0), "max_steps_per_run"),
        (RunCounters(steps_started=1, total_attempts=5, elapsed_seconds=0), "max_total_attempts"),
        (RunCounters(steps_started=1, total_attempts=1, elapsed_seconds=3600.5), "max_run_duration_seconds"),
    ],
)
def test_caps_are_reached_at_the_limit(counters: RunCounters, cap: str | None) -> None:
    hit = check_caps(counters, load_policy_text(POLICY))
    assert (hit.cap if hit else None) == cap
    if hit:
        assert hit.cap in hit.reason and str(hit.limit) in hit.reason


def test_cap_reason_is_readable() -> None:
    hit = check_caps(RunCounters(12, 0, 0), load_policy_text(POLICY))
    assert hit is not None and hit.reason == "cap max_steps_per_run reached: 12 steps started, limit 10"


def test_payload_and_run_data_limits() -> None:
    policy = load_policy_text(POLICY)
    assert check_payload({"a": "x" * 10}, policy) is None
    reason = check_payload({"a": "x" * 100}, policy)
    assert reason is not None and "max_payload_bytes is 64" in reason
    small = Policy.model_validate({"limits": {"max_run_data_bytes": 10}})
    hit = check_run_data({"steps": {"a": "long enough"}}, small)
    assert hit is not None and hit.cap == "max_run_data_bytes"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "require_approval: {moneys: finance}\n",
            "policy.yaml:1:20: require_approval.moneys: Input should be 'money', 'access',",
        ),
        ("caps: {max_steps_per_run: 0}\n", "policy.yaml:1:8: caps.max_steps_per_run: must be >= 1"),
        ("caps:\n  max_step_per_run: 5\n", "policy.yaml:2:3: caps.max_step_per_run: unknown field"),
        (
            "require_approval: {money: 'fin ance'}\n",
            "policy.yaml:1:20: require_approval.money: must contain only letters",
        ),
    ],
)
def test_policy_mistakes_are_located(text: str, expected: str) -> None:
    with pytest.raises(WorkflowError) as info:
        load_policy_text(text, "policy.yaml")
    assert str(info.value.problems[0]).startswith(expected)
