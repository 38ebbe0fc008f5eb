"""Choice conditions: operators, compound rules, recorded reasons, errors on unfit data."""

from typing import Any

import pytest
from workflow_testkit import problems_of

from keel_router.workflow import ChoiceStep, load_workflow_text
from keel_router.workflow.conditions import Condition, ConditionError, evaluate, evaluate_choice, glob_match
from keel_router.workflow.templating import TemplateError, make_context

CTX = make_context(
    trigger_input={"amount": 250, "currency": "EUR", "email": "ada@corp.example", "limit": 100, "n": 1.0},
    steps={"lookup": {"tier": "gold", "groups": ["eng", "ops"], "flag": True}},
    run_id="r",
    workflow="w",
    intent_key="k",
)


def cond(data: dict[str, Any]) -> Condition:
    return Condition.model_validate(data)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"variable": "input.amount", "gt": 100}, True),
        ({"variable": "input.amount", "gt": 250}, False),
        ({"variable": "input.amount", "gte": 250}, True),
        ({"variable": "input.amount", "lt": 250.5}, True),
        ({"variable": "input.amount", "lte": 249}, False),
        ({"variable": "input.amount", "gt": "${input.limit}"}, True),
        ({"variable": "input.currency", "equals": "EUR"}, True),
        ({"variable": "input.currency", "not_equals": "EUR"}, False),
        ({"variable": "input.currency", "lt": "USD"}, True),
        ({"variable": "input.n", "equals": 1}, True),
        ({"variable": "steps.lookup.flag", "equals": 1}, False),  # JSON: true is not 1
        ({"variable": "steps.lookup.tier", "in": ["gold", "platinum"]}, True),
        ({"variable": "steps.lookup.tier", "in": ["silver"]}, False),
        ({"variable": "input.currency", "in": "${steps.lookup.groups}"}, False),
        ({"variable": "steps.lookup.groups", "equals": ["eng", "ops"]}, True),
        ({"variable": "input.missing", "is_present": False}, True),
        ({"variable": "input.amount", "is_present": True}, True),
        ({"variable": "input.email", "matches": "*@corp.example"}, True),
        ({"variable": "input.email", "matches": "ada@*.com"}, False),
        (
            {
                "and": [
                    {"variable": "input.amount", "gt": 100},
                    {"variable": "input.currency", "equals": "EUR"},
                ]
            },
            True,
        ),
        (
            {
                "or": [
                    {"variable": "input.amount", "gt": 1000},
                    {"variable": "steps.lookup.tier", "equals": "x"},
                ]
            },
            False,
        ),
        ({"not": {"variable": "input.currency", "equals": "EUR"}}, False),
        # Short-circuit makes presence guards work: the second rule would raise on its own.
        ({"and": [{"variable": "input.x", "is_present": True}, {"variable": "input.x", "gt": 1}]}, False),
    ],
)
def test_operators(rule: dict[str, Any], expected: bool) -> None:
    assert evaluate(cond(rule), CTX) is expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("*", "", True),
        ("a*c", "abbbc", True),
        ("a*c", "abbbd", False),
        ("*.yaml", "x.yaml", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a?b", "a?b", True),  # only '*' is special
        ("a?b", "axb", False),
        ("**a**b**", "xxaxxbxx", True),
        ("", "", True),
        ("", "x", False),
    ],
)
def test_glob_match(pattern: str, text: str, expected: bool) -> None:
    assert glob_match(pattern, text) is expected


def test_glob_match_has_no_catastrophic_backtracking() -> None:
    # A regex engine with naive backtracking takes exponential time on this shape.
    assert glob_match("*a" * 30 + "b", "a" * 5000) is False


@pytest.mark.parametrize(
    ("rule", "path", "needle"),
    [
        ({"variable": "input.missing", "equals": 1}, "input.missing", "input has no key 'missing'"),
        ({"variable": "input.currency", "gt": 5}, "input.currency", "both must be numbers or both strings"),
        ({"variable": "input.amount", "matches": "2*"}, "input.amount", "'matches' needs a string"),
        ({"variable": "input.amount", "in": "${input.limit}"}, "input.amount", "'in' needs a list"),
    ],
)
def test_unfit_run_data_raises_instead_of_falling_through(rule: dict[str, Any], path: str, needle: str) -> None:
    with pytest.raises(ConditionError) as info:
        evaluate(cond(rule), CTX)
    assert info.value.path == path and needle in str(info.value)


def test_missing_operand_reference_raises_template_error() -> None:
    with pytest.raises(TemplateError) as info:
        evaluate(cond({"variable": "input.amount", "gt": "${input.nope}"}), CTX)
    assert info.value.path == "input.nope"


CHOICE = """\
name: w
steps:
  - id: route
    kind: choice
    choices:
      - variable: input.amount
        gt: 1000
        next: big
      - and:
          - variable: input.tier
            is_present: true
          - variable: input.currency
            equals: EUR
        next: euro
      - variable: input.amount
        gt: "${input.limit}"
        next: medium
    default: small
  - {id: big, kind: succeed}
  - {id: euro, kind: succeed}
  - {id: medium, kind: succeed}
  - {id: small, kind: succeed}
"""


def choice_step() -> ChoiceStep:
    step = load_workflow_text(CHOICE).steps[0]
    assert isinstance(step, ChoiceStep)
    return step


def test_evaluate_choice_takes_the_first_matching_rule_and_says_why() -> None:
    nxt, why = evaluate_choice(choice_step(), CTX)
    assert nxt == "medium"
    assert why == 'choices[2] matched: input.amount gt "${input.limit}" (input.amount = 250; input.limit = 100)'


def test_evaluate_choice_falls_back_to_default_and_says_so() -> None:
    ctx = {**CTX, "input": {**CTX["input"], "amount": 50, "currency": "USD"}}
    assert evaluate_choice(choice_step(), ctx) == ("small", "no rule matched; took the default")


def test_evaluate_choice_reason_for_compound_rule_names_absent_values() -> None:
    ctx = {**CTX, "input": {**CTX["input"], "tier": "gold"}}
    nxt, why = evaluate_choice(choice_step(), ctx)
    assert nxt == "euro"
    assert why == (
        'choices[1] matched: and(input.tier is_present true, input.currency equals "EUR") '
        '(input.currency = "EUR"; input.tier = "gold")'
    )


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("{variable: input.a, gt: 1, lt: 3, next: a}", "exactly one operator"),
        ("{variable: input.a, next: a}", "exactly one operator"),
        ("{gt: 1, next: a}", "'gt' needs a variable"),
        ("{variable: '${input.a}', gt: 1, next: a}", "no '${}'"),
        ("{and: [{variable: input.a, equals: 1}], variable: input.b, next: a}", "takes no variable"),
        ("{variable: input.a, equals: '${input', next: a}", "unterminated"),
        ("{variable: input.a, in: 5, next: a}", "must be a list"),
        ("{variable: input.a, equal: 5, next: a}", "unknown field 'equal' (did you mean 'equals'?)"),
        ("{and: [], next: a}", "at least 1 item"),
    ],
)
def test_malformed_rules_are_located_errors(rule: str, needle: str) -> None:
    text = f"name: w\nsteps:\n  - id: a\n    kind: choice\n    choices:\n      - {rule}\n    default: a\n"
    problems = problems_of(text)
    assert any(p.startswith("wf.yaml:6:") and "steps[0].choices[0]" in p and needle in p for p in problems), problems


def test_choice_variables_are_checked_against_the_graph() -> None:
    text = """\
name: w
steps:
  - id: a
    kind: choice
    choices:
      - {variable: steps.later.x, equals: 1, next: later}
    default: later
  - {id: later, kind: tool, tool: t}
"""
    assert problems_of(text) == [
        "wf.yaml:6:9: steps[0].choices[0]: 'steps.later.x': step 'later' cannot run before this step"
    ]
