"""Templating: types kept, embedded values stringified, escapes, hostile data stays inert."""

from typing import Any

import pytest

from keel_router.workflow.templating import (
    TemplateError,
    TemplateSyntaxError,
    make_context,
    references,
    render,
    set_path,
)


@pytest.fixture
def ctx() -> dict[str, Any]:
    return make_context(
        trigger_input={"customer": "Ada", "amount": 1250, "vip": True, "tags": ["a", "b"], "note": None},
        steps={"lookup": {"customer": {"id": 42, "emails": ["ada@example.com"], "score": 0.5}}},
        run_id="run-1",
        workflow="refund",
        intent_key="intent-9",
    )


def test_whole_string_reference_keeps_the_json_type(ctx: dict[str, Any]) -> None:
    template = {
        "id": "${steps.lookup.customer.id}",
        "customer": "${steps.lookup.customer}",
        "vip": "${input.vip}",
        "tags": "${input.tags}",
        "note": "${input.note}",
        "score": "${ steps.lookup.customer.score }",
    }
    assert render(template, ctx) == {
        "id": 42,
        "customer": {"id": 42, "emails": ["ada@example.com"], "score": 0.5},
        "vip": True,
        "tags": ["a", "b"],
        "note": None,
        "score": 0.5,
    }


def test_embedded_references_are_stringified(ctx: dict[str, Any]) -> None:
    assert render("Refund ${input.amount} for ${input.customer}", ctx) == "Refund 1250 for Ada"
    assert render("vip=${input.vip} note=${input.note} tags=${input.tags}", ctx) == (
        'vip=true note=null tags=["a","b"]'
    )
    assert render(" ${input.amount}", ctx) == " 1250"  # not whole-string: any other text makes it a string


def test_list_index_segments(ctx: dict[str, Any]) -> None:
    assert render("${steps.lookup.customer.emails.0}", ctx) == "ada@example.com"
    assert render("${run.id}/${run.workflow}/${run.intent_key}", ctx) == "run-1/refund/intent-9"


def test_non_string_values_and_keys_pass_through(ctx: dict[str, Any]) -> None:
    template = {"${input.customer}": 1, "n": [1, 2.5, True, None, "${input.amount}"]}
    assert render(template, ctx) == {"${input.customer}": 1, "n": [1, 2.5, True, None, 1250]}


def test_escape_produces_a_literal_dollar_brace(ctx: dict[str, Any]) -> None:
    assert render("cost: $${input.amount} is literal, ${input.amount} is not", ctx) == (
        "cost: ${input.amount} is literal, 1250 is not"
    )
    # Scanning is left to right: a lone '$', then the escape.
    assert render("$$${input.amount}", ctx) == "$${input.amount}"
    assert render("$${", ctx) == "${"
    assert render("price $5 and $", ctx) == "price $5 and $"
    assert references("$${input.amount}") == set()


HOSTILE = [
    "${run.id}",
    "${steps.lookup.customer.id}",
    "$${input.customer}",
    "${input.missing}",
    "${",
    "}${",
    "${__class__}",
    "{{7*7}}",
]


@pytest.mark.parametrize("evil", HOSTILE)
def test_template_syntax_inside_run_data_stays_inert(evil: str) -> None:
    ctx = make_context(
        trigger_input={"text": evil, "nested": {"deep": [evil]}},
        steps={"lookup": {"customer": {"id": 42}, "echo": evil}},
        run_id="run-1",
        workflow="w",
        intent_key="k",
    )
    # Whole-string: the value comes back exactly, not evaluated again.
    assert render("${input.text}", ctx) == evil
    assert render("${input.nested}", ctx) == {"deep": [evil]}
    assert render("${steps.lookup.echo}", ctx) == evil
    # Embedded: the value is spliced in verbatim.
    assert render("said: ${input.text}!", ctx) == f"said: {evil}!"
    assert render({"a": ["${input.text}", "x ${input.text}"]}, ctx) == {"a": [evil, f"x {evil}"]}


def test_rendered_value_is_a_copy_of_run_data(ctx: dict[str, Any]) -> None:
    out = render("${steps.lookup.customer}", ctx)
    out["id"] = 0
    assert ctx["steps"]["lookup"]["customer"]["id"] == 42


@pytest.mark.parametrize(
    ("template", "path", "why"),
    [
        ("${input.nope}", "input.nope", "input has no key 'nope'"),
        ("x ${steps.other.id}", "steps.other.id", "steps has no key 'other'"),
        ("${input.customer.name}", "input.customer.name", "input.customer is a string, not an object"),
        ("${input.tags.5}", "input.tags.5", "input.tags is a list of 2 item(s)"),
        ("${input.note.x}", "input.note.x", "input.note is null"),
        ("${human.reply}", "human.reply", "run data has no key 'human'"),
    ],
)
def test_missing_reference_names_the_path(ctx: dict[str, Any], template: str, path: str, why: str) -> None:
    with pytest.raises(TemplateError) as info:
        render({"wrapped": [template]}, ctx)
    assert info.value.path == path
    assert why in str(info.value)


@pytest.mark.parametrize("bad", ["${input.x", "${}", "${input..x}", "${input x}", "${input.$y}", "a ${b"])
def test_malformed_templates_raise_syntax_errors(bad: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        references({"k": bad})


def test_references_lists_every_path() -> None:
    template = {"a": "${input.x}", "b": ["${steps.s.y} and ${run.id}", 3], "c": "plain"}
    assert references(template) == {"input.x", "steps.s.y", "run.id"}


def test_set_path_creates_objects_on_the_way() -> None:
    data: dict[str, Any] = {"steps": {"a": 1}}
    set_path(data, "steps.b.c", {"x": 1})
    set_path(data, "errors.a", "boom")
    assert data == {"steps": {"a": 1, "b": {"c": {"x": 1}}}, "errors": {"a": "boom"}}


def test_human_is_in_the_context_only_once_given() -> None:
    assert "human" not in make_context(trigger_input={}, run_id="r", workflow="w", intent_key="k")
    given = make_context(trigger_input={}, run_id="r", workflow="w", intent_key="k", human={"ok": True})
    assert given["human"] == {"ok": True}
