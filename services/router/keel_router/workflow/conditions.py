"""Conditions of `choice` steps: Step Functions-like comparison rules on run data.

A leaf rule names a `variable` (a path into run data, no `${}`) and exactly one operator:
`equals`, `not_equals`, `gt`, `gte`, `lt`, `lte`, `in`, `is_present`, `matches`. Compound rules use
`and` / `or` (lists of rules) or `not` (one rule). Operand values are literals, or templates such as
`"${input.limit}"` to compare against other run data.

A missing variable or a type mismatch (`gt` on a string against a number) raises `ConditionError`
rather than silently not matching: falling through to the default on bad data could route a run past a
check it was meant to hit. Guard optional data with `is_present` inside an `and`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import Loc, RunDataError, raise_problems
from .patterns import NAME_PATTERN
from .templating import PATH_RE, TemplateSyntaxError, lookup, references, render

if TYPE_CHECKING:
    from .models import ChoiceStep

_COMPARISONS = ("equals", "not_equals", "gt", "gte", "lt", "lte", "in", "is_present", "matches")
_LOGICAL = ("and", "or", "not")


class ConditionError(RunDataError):
    """Run data cannot be compared as a rule asks (missing variable, wrong type)."""


class Condition(BaseModel):
    """One rule; exactly one operator is set."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, serialize_by_alias=True)

    variable: str | None = Field(None, description="Path into run data, e.g. steps.lookup.tier")
    equals: Any = None
    not_equals: Any = None
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None
    in_: Any = Field(None, alias="in", description="A list of values, or a template resolving to one")
    is_present: bool | None = None
    matches: str | None = Field(None, description="Glob: '*' matches any text; '\\*' is a literal star")
    and_: list[Condition] | None = Field(None, alias="and", min_length=1)
    or_: list[Condition] | None = Field(None, alias="or", min_length=1)
    not_: Condition | None = Field(None, alias="not")

    _FIELD_OF: ClassVar[dict[str, str]] = {"in": "in_", "and": "and_", "or": "or_", "not": "not_"}

    def operator(self) -> str:
        ops = self._operators()
        return ops[0]

    def _operators(self) -> list[str]:
        return [op for op in (*_COMPARISONS, *_LOGICAL) if self._FIELD_OF.get(op, op) in self.model_fields_set]

    def operand(self) -> Any:
        return getattr(self, self._FIELD_OF.get(self.operator(), self.operator()))

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        problems: list[tuple[Loc, str]] = []
        ops = self._operators()
        if len(ops) != 1:
            found = ", ".join(ops) if ops else "none"
            problems.append(
                (
                    (),
                    f"a rule needs exactly one operator of {', '.join(_COMPARISONS + _LOGICAL)} (found: {found})",
                )
            )
        elif ops[0] in _COMPARISONS:
            if self.variable is None:
                problems.append((("variable",), f"'{ops[0]}' needs a variable to compare"))
            elif not PATH_RE.match(self.variable):
                problems.append((("variable",), "must be a dotted path like steps.lookup.tier (no '${}')"))
            if ops[0] == "is_present" and self.is_present is None:
                problems.append((("is_present",), "must be true or false"))
            if ops[0] == "matches" and self.matches is None:
                problems.append((("matches",), "must be a string"))
            if ops[0] == "in" and not isinstance(self.in_, list | str):
                problems.append((("in",), "must be a list or a template resolving to a list"))
            if ops[0] not in ("is_present", "matches"):
                try:
                    references(self.operand())
                except TemplateSyntaxError as exc:
                    problems.append(((ops[0],), str(exc)))
        elif self.variable is not None:
            problems.append((("variable",), f"'{ops[0]}' combines rules and takes no variable"))
        if problems:
            raise_problems(problems)
        return self

    def variables(self) -> set[str]:
        """Every path this rule reads: variables and operand references (for load-time checks)."""
        op = self.operator()
        if op in ("and", "or"):
            return set().union(*(c.variables() for c in self.operand()))
        if op == "not":
            assert self.not_ is not None
            return self.not_.variables()
        out = {self.variable} if self.variable else set()
        if op not in ("is_present", "matches"):
            out |= references(self.operand())
        return out

    def describe(self) -> str:
        op = self.operator()
        if op in ("and", "or"):
            return f"{op}({', '.join(c.describe() for c in self.operand())})"
        if op == "not":
            assert self.not_ is not None
            return f"not({self.not_.describe()})"
        return f"{self.variable} {op} {_show(self.operand())}"


class ChoiceRule(Condition):
    """A top-level rule of a choice step: when it holds, the run goes to `next`."""

    next: str = Field(pattern=NAME_PATTERN, description="Step to go to when the rule holds")


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def json_equal(a: Any, b: Any) -> bool:
    """Equality with JSON semantics: 1 == 1.0, but true != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def glob_match(pattern: str, text: str) -> bool:
    """`*` matches any run of characters; `\\*` and `\\\\` are literal. Greedy with one backtrack point,
    so worst case O(len(pattern) * len(text)) and no regex engine (no ReDoS)."""
    tokens: list[str | None] = []  # None is a star
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            tokens.append(pattern[i + 1])
            i += 2
        elif c == "*":
            tokens.append(None)
            i += 1
        else:
            tokens.append(c)
            i += 1
    p = t = 0
    star_p, star_t = -1, 0
    while t < len(text):
        if p < len(tokens) and tokens[p] is not None and tokens[p] == text[t]:
            p += 1
            t += 1
        elif p < len(tokens) and tokens[p] is None:
            star_p, star_t = p, t
            p += 1
        elif star_p != -1:
            p = star_p + 1
            star_t += 1
            t = star_t
        else:
            return False
    while p < len(tokens) and tokens[p] is None:
        p += 1
    return p == len(tokens)


def _ordered(op: str, var: str, actual: Any, expected: Any) -> bool:
    if not ((_is_number(actual) and _is_number(expected)) or (isinstance(actual, str) and isinstance(expected, str))):
        raise ConditionError(
            f"cannot compare {var} = {_show(actual)} {op} {_show(expected)}: both must be numbers or both strings",
            path=var,
        )
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    return bool(actual <= expected)


def evaluate(cond: Condition, ctx: Mapping[str, Any]) -> bool:
    """Evaluate a rule against run data (`and`/`or` short-circuit, so presence guards work)."""
    op = cond.operator()
    if op == "and":
        return all(evaluate(c, ctx) for c in cond.operand())
    if op == "or":
        return any(evaluate(c, ctx) for c in cond.operand())
    if op == "not":
        assert cond.not_ is not None
        return not evaluate(cond.not_, ctx)
    var = cond.variable
    assert var is not None
    if op == "is_present":
        try:
            lookup(ctx, var)
        except RunDataError:
            return not cond.is_present
        return bool(cond.is_present)
    try:
        actual = lookup(ctx, var)
    except RunDataError as exc:
        raise ConditionError(f"choice variable {exc}", path=var) from exc
    if op == "matches":
        if not isinstance(actual, str):
            raise ConditionError(f"'matches' needs a string, {var} = {_show(actual)}", path=var)
        assert cond.matches is not None
        return glob_match(cond.matches, actual)
    expected = render(cond.operand(), ctx)
    if op == "equals":
        return json_equal(actual, expected)
    if op == "not_equals":
        return not json_equal(actual, expected)
    if op == "in":
        if not isinstance(expected, list):
            raise ConditionError(f"'in' needs a list to look in, got {_show(expected)}", path=var)
        return any(json_equal(actual, e) for e in expected)
    return _ordered(op, var, actual, expected)


def _values(cond: Condition, ctx: Mapping[str, Any]) -> str:
    shown = []
    for var in sorted(v for v in cond.variables() if PATH_RE.match(v)):
        try:
            shown.append(f"{var} = {_show(lookup(ctx, var))}")
        except RunDataError:
            shown.append(f"{var} absent")
    return "; ".join(shown)


def evaluate_choice(step: ChoiceStep, ctx: Mapping[str, Any]) -> tuple[str, str]:
    """(next step id, why): the first rule that holds wins, else the default.

    The reason names the rule, its position and the values it saw, so the router can record it.
    Raises `ConditionError` / `TemplateError` (both `RunDataError`) when run data does not fit.
    """
    for i, rule in enumerate(step.choices):
        if evaluate(rule, ctx):
            return rule.next, f"choices[{i}] matched: {rule.describe()} ({_values(rule, ctx)})"
    return step.default, "no rule matched; took the default"
