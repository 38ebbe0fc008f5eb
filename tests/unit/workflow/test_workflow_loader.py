"""Loading workflow files: valid examples load; every kind of mistake names file:line:col and field."""

from pathlib import Path

import pytest
from workflow_testkit import EXAMPLES, problems_of

from keel_router.workflow import (
    ApprovalStep,
    ChoiceStep,
    DecideStep,
    ToolStep,
    WorkflowError,
    load_workflow,
    load_workflow_text,
    load_workflows,
)
from keel_router.workflow.loader import MAX_DEPTH, MAX_FILE_BYTES


def test_every_example_loads_with_its_steps() -> None:
    workflows = load_workflows(EXAMPLES)
    assert set(workflows) == {"slack_to_ticket", "refund", "access_change"}
    refund = workflows["refund"]
    assert refund.source == EXAMPLES / "refund.yaml"
    step = refund.step("refund")
    assert isinstance(step, ToolStep)
    assert step.side_effect == "write" and step.action_class == ["money"]
    assert step.verify is not None and step.verify.tool == "billing.get_charge"
    assert [a.id for a in refund.approvals_for("refund")] == ["approve_refund", "approve_refund_lead"]
    assert isinstance(refund.step("check_amount"), ChoiceStep)
    assert isinstance(workflows["slack_to_ticket"].step("classify"), DecideStep)
    assert isinstance(workflows["access_change"].step("approve_grant"), ApprovalStep)


def test_start_at_next_defaults_and_end() -> None:
    wf = load_workflow_text(
        "name: w\nsteps:\n"
        "  - {id: a, kind: tool, tool: t.a}\n"
        "  - {id: b, kind: tool, tool: t.b, end: true}\n"
        "  - {id: c, kind: tool, tool: t.c, next: a}\n"
        "start_at: c\n"
    )
    assert wf.start_step_id == "c"
    a, b, c = wf.steps
    assert isinstance(a, ToolStep) and isinstance(b, ToolStep) and isinstance(c, ToolStep)
    assert wf.next_of(c) == "a"  # explicit
    assert wf.next_of(a) == "b"  # default: the following step
    assert wf.next_of(b) is None  # end: true ends the run successfully
    assert wf.version == 1
    assert a.output_path == "steps.a"


def test_last_step_without_next_ends_the_run_and_start_defaults_to_first() -> None:
    wf = load_workflow_text("name: w\nsteps:\n  - {id: a, kind: tool, tool: t}\n  - {id: b, kind: tool, tool: t}\n")
    assert wf.start_step_id == "a"
    last = wf.steps[1]
    assert isinstance(last, ToolStep) and wf.next_of(last) is None


def test_decide_option_next_overrides_step_next() -> None:
    wf = load_workflow(EXAMPLES / "slack_to_ticket.yaml")
    step = wf.step("classify")
    assert isinstance(step, DecideStep)
    assert wf.next_of(step, "create_ticket") == "lookup_contact"
    assert wf.next_of(step, "ignore") == "ignored"
    assert wf.next_of(step) == "lookup_contact"  # no intent: the list order


def test_typo_in_field_names_the_line_and_suggests_the_field() -> None:
    text = "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t.a\n    retyr: []\n"
    assert problems_of(text) == ["wf.yaml:6:5: steps[0].retyr: unknown field 'retyr' (did you mean 'retry'?)"]


def test_typo_at_top_level_is_an_error_too() -> None:
    text = "name: w\nstep_list: []\nsteps:\n  - {id: a, kind: succeed}\n"
    assert problems_of(text) == ["wf.yaml:2:1: step_list: unknown field 'step_list' (did you mean 'steps'?)"]


def test_bad_backoff_rate_points_at_the_field_inside_the_retrier() -> None:
    text = (
        "name: w\n"
        "steps:\n"
        "  - id: a\n"
        "    kind: tool\n"
        "    tool: t.a\n"
        "    retry:\n"
        "      - error_equals: [transient]\n"
        "        backoff_rate: 0.5\n"
    )
    assert problems_of(text, "refund.yaml") == ["refund.yaml:8:9: steps[0].retry[0].backoff_rate: must be >= 1"]


def test_unknown_next_target_is_named_with_a_suggestion() -> None:
    text = "name: w\nsteps:\n  - id: lookup\n    kind: tool\n    tool: t.a\n    next: lokup\n"
    assert problems_of(text) == ["wf.yaml:6:5: steps[0].next: unknown step 'lokup' (did you mean 'lookup'?)"]


def test_unknown_targets_in_catch_choice_and_escalation_are_all_reported() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t.a
    catch:
      - error_equals: [all]
        next: nowhere
  - id: c
    kind: choice
    choices:
      - variable: input.x
        equals: 1
        next: a
    default: missing_default
  - id: g
    kind: approval
    role: finance
    approves: a
    escalate_to: nobody
"""
    assert problems_of(text) == [
        "wf.yaml:8:9: steps[0].catch[0].next: unknown step 'nowhere'",
        "wf.yaml:15:5: steps[1].default: unknown step 'missing_default'",
        "wf.yaml:20:5: steps[2].escalate_to: unknown step 'nobody'",
    ]


def test_retrier_matching_all_must_be_last() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t.a
    retry:
      - error_equals: [all]
      - error_equals: [transient]
"""
    assert problems_of(text) == [
        "wf.yaml:7:9: steps[0].retry[0].error_equals: a retry entry matching 'all' must be the last one",
    ]


def test_a_class_already_matched_by_an_earlier_retrier_is_reported() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t.a
    retry:
      - error_equals: [transient, timeout]
      - error_equals: [auth, timeout]
"""
    assert problems_of(text) == [
        "wf.yaml:8:9: steps[0].retry[1].error_equals: 'timeout' is already matched by retry[0], "
        "so this entry never applies to it",
    ]


def test_all_must_stand_alone_in_error_equals() -> None:
    text = "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t.a\n    catch:\n"
    text += "      - error_equals: [transient, all]\n        next: a\n"
    assert problems_of(text) == ["wf.yaml:7:9: steps[0].catch[0].error_equals: 'all' must appear alone in error_equals"]


def test_unknown_outcome_retry_on_a_write_without_verify_is_refused() -> None:
    text = """\
name: w
steps:
  - id: pay
    kind: tool
    tool: billing.refund
    side_effect: write
    retry:
      - error_equals: [transient]
      - error_equals: [unknown_outcome]
"""
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yaml:9:9: steps[0].retry[1].error_equals: a write without verify")
    assert "add verify" in problem


def test_all_retrier_on_a_write_without_verify_is_refused_because_it_includes_unknown_outcome() -> None:
    text = "name: w\nsteps:\n  - id: pay\n    kind: tool\n    tool: billing.refund\n"
    text += "    side_effect: write\n    retry:\n      - error_equals: [all]\n"
    (problem,) = problems_of(text)
    assert "steps[0].retry[0].error_equals" in problem and "'all' includes unknown_outcome" in problem


@pytest.mark.parametrize(
    "extra",
    [
        "    side_effect: read\n",  # a read can be repeated safely
        "    side_effect: write\n    verify: {tool: billing.get_charge, input: {key: '${attempt.idempotency_key}'}}\n",
    ],
)
def test_unknown_outcome_retry_is_allowed_for_reads_and_verified_writes(extra: str) -> None:
    text = "name: w\nsteps:\n  - id: pay\n    kind: tool\n    tool: billing.refund\n" + extra
    text += "    retry:\n      - error_equals: [unknown_outcome]\n"
    assert load_workflow_text(text).steps[0].id == "pay"


def test_choice_without_default_is_an_error() -> None:
    text = """\
name: w
steps:
  - id: route
    kind: choice
    choices:
      - variable: input.amount
        gt: 100
        next: route
"""
    assert problems_of(text) == ["wf.yaml:3:5: steps[0].default: required field is missing"]


def test_duplicate_step_ids_are_reported_at_the_second_one() -> None:
    text = "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t.a\n  - id: a\n    kind: succeed\n"
    assert problems_of(text) == ["wf.yaml:6:5: steps[1].id: duplicate step id 'a' (also steps[0])"]


@pytest.mark.parametrize("name", ["refund flow", "refund.v2", "r*", ""])
def test_workflow_name_must_be_a_subject_token(name: str) -> None:
    text = f"name: '{name}'\nsteps:\n  - {{id: a, kind: succeed}}\n"
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yaml:1:1: name: ")


def test_bad_step_id_token_is_refused() -> None:
    (problem,) = problems_of("name: w\nsteps:\n  - {id: 'a.b', kind: succeed}\n")
    assert problem == "wf.yaml:3:6: steps[0].id: must contain only letters, digits, '_' and '-'"


def test_unknown_and_missing_step_kind() -> None:
    assert problems_of("name: w\nsteps:\n  - {id: a, kind: tol}\n") == [
        "wf.yaml:3:5: steps[0]: unknown step kind 'tol' (expected one of 'tool', 'decide', 'choice', "
        "'approval', 'human', 'wait', 'succeed', 'fail')"
    ]
    (problem,) = problems_of("name: w\nsteps:\n  - {id: a}\n")
    assert problem.startswith("wf.yaml:3:5: steps[0]: a step needs a kind")


def test_missing_required_field_of_a_kind_points_at_the_step() -> None:
    assert problems_of("name: w\nsteps:\n  - id: a\n    kind: tool\n") == [
        "wf.yaml:3:5: steps[0].tool: required field is missing"
    ]


def test_strict_types_refuse_coercion() -> None:
    text = "name: w\nversion: '2'\nsteps:\n  - {id: a, kind: tool, tool: t, end: 'yes'}\n"
    problems = problems_of(text)
    assert [p.split(": ")[1] for p in problems] == ["version", "steps[0].end"]


def test_yaml_1_1_booleans_and_sexagesimals_stay_strings_in_templates() -> None:
    text = "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t\n"
    text += "    input: {on: yes, time: 12:30, code: 010, date: 2024-01-02, n: 1e3, off: ~}\n"
    step = load_workflow_text(text).steps[0]
    assert isinstance(step, ToolStep)
    assert step.input == {
        "on": "yes",
        "time": "12:30",
        "code": 10,
        "date": "2024-01-02",
        "n": 1000.0,
        "off": None,
    }


def test_duplicate_yaml_keys_are_an_error_not_a_silent_override() -> None:
    text = "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t\n    tool: u\n"
    assert problems_of(text) == ["wf.yaml:6:5: tool: duplicate key (also on line 5)"]


def test_anchors_and_merge_keys_work_for_shared_retry_policies() -> None:
    text = """\
name: w
x-retry: &standard
  error_equals: [transient]
  max_attempts: 5
steps:
  - id: a
    kind: tool
    tool: t
    retry: [*standard]
"""
    # The shared anchor lives in an unknown top-level key, which is itself an error; put it inside
    # a template instead to show anchors work.
    assert problems_of(text)[0].startswith("wf.yaml:2:1: x-retry: unknown field")
    ok = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t
    input: {defaults: &d {region: eu, tier: gold}}
    retry:
      - error_equals: [transient]
  - id: b
    kind: tool
    tool: t
    input: {<<: *d, tier: silver}
"""
    step = load_workflow_text(ok).steps[1]
    assert isinstance(step, ToolStep) and step.input == {"region": "eu", "tier": "silver"}


def test_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    (problem,) = problems_of("\n".join(lines) + "\n")
    assert "aliases are expanded" in problem and problem.startswith("wf.yaml:")


def test_excessive_nesting_is_refused() -> None:
    text = "name: w\nsteps: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    (problem,) = problems_of(text)
    assert f"nested deeper than {MAX_DEPTH} levels" in problem


def test_oversized_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: w\n# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "limit" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty file"),
        ("name: w\n---\nname: v\n", "exactly one YAML document"),
        ("name: [unclosed\n", "invalid YAML"),
        ("name: !!binary aGk=\n", "unsupported YAML tag"),
        ("name: !custom x\n", "unsupported YAML tag"),
        ("- just\n- a list\n", "<document>"),
        ("a: &a [*a]\n", "alias *a refers to itself"),
        ("name: w\nsteps:\n  - &s {id: a, kind: tool, tool: t, input: {self: *s}}\n", "refers to itself"),
        ("name: w\nsteps:\n  - {id: a, kind: tool, tool: t, input: {1: x}}\n", "is not a string"),
    ],
)
def test_malformed_documents_raise_workflow_error(text: str, needle: str) -> None:
    assert any(needle in p for p in problems_of(text))


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\n")
    with pytest.raises(WorkflowError, match="not UTF-8"):
        load_workflow(bad)


def test_unreachable_step_is_an_error() -> None:
    text = "name: w\nsteps:\n  - {id: a, kind: succeed}\n  - {id: orphan, kind: succeed}\n"
    assert problems_of(text) == ["wf.yaml:4:5: steps[1]: step 'orphan' is unreachable from the start step 'a'"]


def test_end_and_next_together_is_an_error() -> None:
    text = "name: w\nsteps:\n  - {id: a, kind: tool, tool: t, end: true, next: b}\n  - {id: b, kind: succeed}\n"
    (problem,) = problems_of(text)
    assert "steps[0].end: end: true cannot be combined with next" in problem


def test_action_class_on_a_read_step_is_an_error() -> None:
    (problem,) = problems_of("name: w\nsteps:\n  - {id: a, kind: tool, tool: t, action_class: [money]}\n")
    assert "steps[0].action_class: action classes mark writes" in problem


def test_approval_must_gate_a_later_write_step() -> None:
    text = """\
name: w
steps:
  - {id: read, kind: tool, tool: t}
  - {id: gate, kind: approval, role: finance, approves: read, escalate_to: done}
  - {id: done, kind: succeed}
"""
    assert problems_of(text) == ["wf.yaml:4:47: steps[1].approves: 'read' is not a write tool step"]
    text = """\
name: w
steps:
  - {id: pay, kind: tool, tool: t, side_effect: write}
  - {id: gate, kind: approval, role: finance, approves: pay, escalate_to: done}
  - {id: done, kind: succeed}
"""
    assert problems_of(text) == ["wf.yaml:4:47: steps[1].approves: 'pay' cannot run after this approval"]


def test_expiry_or_rejection_must_not_lead_straight_to_the_gated_write() -> None:
    text = """\
name: w
steps:
  - {id: gate, kind: approval, role: finance, approves: pay, escalate_to: pay, on_reject: pay}
  - {id: pay, kind: tool, tool: t, side_effect: write}
"""
    assert problems_of(text) == [
        "wf.yaml:3:62: steps[0].escalate_to: must not go to 'pay', the write this step gates",
        "wf.yaml:3:80: steps[0].on_reject: must not go to 'pay', the write this step gates",
    ]


def test_invalid_json_schema_is_located() -> None:
    text = "name: w\ninput_schema: {type: objekt}\nsteps:\n  - {id: a, kind: succeed}\n"
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yaml:2:1: input_schema: not a valid JSON Schema")


def test_decide_option_intents_are_unique() -> None:
    text = """\
name: w
steps:
  - id: d
    kind: decide
    decider: llm.triage
    options:
      - intent: refund
      - intent: refund
"""
    assert problems_of(text) == ["wf.yaml:8:9: steps[0].options[1].intent: duplicate intent (also options[0])"]


def test_template_references_to_steps_that_cannot_run_earlier_are_errors() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t
    input:
      customer: ${steps.b.customer}
  - id: b
    kind: tool
    tool: t
    input: "${steps.a.x} ${inputs.y} ${run.foo} ${human.note} ${steps.a"
"""
    assert problems_of(text) == [
        "wf.yaml:7:7: steps[0].input.customer: 'steps.b.customer': step 'b' cannot run before this step",
        "wf.yaml:11:5: steps[1].input: unterminated '${' at offset 50 (write '$${' for a literal)",
    ]
    text = text.replace(" ${steps.a", "")
    assert problems_of(text)[1:] == [
        "wf.yaml:11:5: steps[1].input: 'inputs.y': unknown root 'inputs' (expected one of input, steps, run, "
        "human, errors) (did you mean 'input'?)",
        "wf.yaml:11:5: steps[1].input: 'run.foo': run has only id, workflow, intent_key",
        "wf.yaml:11:5: steps[1].input: 'human.note': no human step can run before this step",
    ]


def test_references_through_a_catch_path_and_custom_result_paths_are_accepted() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: tool
    tool: t
    result_path: steps.contact
    catch:
      - {error_equals: [all], next: b, result_path: errors.crm}
  - id: b
    kind: tool
    tool: t
    input: {c: "${steps.contact.id}", e: "${errors.crm.message}"}
"""
    assert load_workflow_text(text).steps[1].id == "b"


def test_attempt_root_is_only_for_verify_input() -> None:
    text = "name: w\nsteps:\n  - {id: a, kind: tool, tool: t, input: {k: '${attempt.idempotency_key}'}}\n"
    (problem,) = problems_of(text)
    assert "unknown root 'attempt'" in problem


def test_load_workflows_reports_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: same\nsteps:\n  - {id: a, kind: succeed}\n")
    (tmp_path / "two.yml").write_text("# comment\nname: same\nsteps:\n  - {id: a, kind: succeed}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(WorkflowError) as info:
        load_workflows(tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'two.yml'}:2:1: name: workflow name 'same' is already used by {tmp_path / 'one.yaml'}"
    ]


def test_load_workflows_collects_problems_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nsteps: []\n")
    (tmp_path / "b.yaml").write_text("name: b\nsteps:\n  - {id: x, kind: nope}\n")
    with pytest.raises(WorkflowError) as info:
        load_workflows(tmp_path)
    assert [Path(p.file).name for p in info.value.problems] == ["a.yaml", "b.yaml"]


def test_digest_changes_with_the_definition() -> None:
    base = "name: w\nsteps:\n  - {id: a, kind: tool, tool: t, timeout_seconds: 10}\n"
    one = load_workflow_text(base)
    assert one.digest() == load_workflow_text(base).digest()
    assert one.digest() != load_workflow_text(base.replace("10", "11")).digest()
