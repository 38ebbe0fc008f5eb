"""Pure checks the router runs while interpreting steps: decider answers, human input, wait deadlines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jsonschema import FormatChecker  # type: ignore[import-untyped]
from jsonschema.validators import Draft202012Validator, validator_for  # type: ignore[import-untyped]

from .errors import RunDataError
from .models import DecideStep, HumanStep, ToolStep, WaitStep, Workflow
from .policy import Policy, check_payload
from .retry import Catcher
from .templating import render, string_references


@dataclass(frozen=True)
class SchemaProblem:
    #: Dotted path of the offending (or missing) field, rooted at `root` (e.g. payload.amount).
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def schema_problems(schema: Mapping[str, Any], value: Any, root: str = "payload") -> list[SchemaProblem]:
    """Every way `value` fails `schema` (empty when valid). A missing required field is named by its path."""
    cls = validator_for(schema, default=Draft202012Validator)
    validator = cls(schema, format_checker=FormatChecker())
    out: list[SchemaProblem] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join([root, *(str(p) for p in error.absolute_path)])
        if error.validator == "required" and isinstance(error.instance, Mapping):
            for name in error.validator_value:
                if name not in error.instance:
                    out.append(SchemaProblem(f"{path}.{name}", "required field is missing"))
        else:
            out.append(SchemaProblem(path, error.message))
    return out


@dataclass(frozen=True)
class DecisionAccepted:
    intent: str
    payload: Any
    #: None means the run ends successfully after the decide step.
    next_step: str | None
    #: What to store at the step's result path.
    result: dict[str, Any]


@dataclass(frozen=True)
class DecisionNeedsHuman:
    """The decision cannot be acted on; park the run in `needs_human` asking for `missing`."""

    missing: str
    reason: str


def check_decision(
    workflow: Workflow,
    step: DecideStep,
    *,
    intent: str | None,
    payload: Any,
    confidence: float | None = None,
    unsure: bool = False,
    policy: Policy | None = None,
) -> DecisionAccepted | DecisionNeedsHuman:
    """Accept a decider's answer only if the intent is declared, the payload valid and the decider sure."""
    declared = ", ".join(o.intent for o in step.options)
    if unsure or intent is None:
        return DecisionNeedsHuman("intent", f"decider is unsure; choose one of: {declared}")
    if step.min_confidence is not None and (confidence is None or confidence < step.min_confidence):
        shown = "none" if confidence is None else f"{confidence:g}"
        return DecisionNeedsHuman(
            "intent", f"decider confidence {shown} is below min_confidence {step.min_confidence:g}"
        )
    option = step.option(intent)
    if option is None:
        return DecisionNeedsHuman("intent", f"intent '{intent}' is not declared; declared: {declared}")
    problems = schema_problems(option.payload_schema, payload)
    if problems:
        return DecisionNeedsHuman(problems[0].path, "; ".join(map(str, problems)))
    if policy is not None and (too_big := check_payload(payload, policy)):
        return DecisionNeedsHuman("payload", too_big)
    result = {"intent": intent, "payload": payload, "confidence": confidence}
    return DecisionAccepted(intent, payload, workflow.next_of(step, intent), result)


def check_human_input(step: HumanStep, data: Any, policy: Policy | None = None) -> list[SchemaProblem]:
    """Problems with input a human submitted for `step` (empty: continue with it)."""
    problems = schema_problems(step.input_schema, data, root="input")
    if not problems and policy is not None and (too_big := check_payload(data, policy)):
        problems.append(SchemaProblem("input", too_big))
    return problems


def resolve_wait(step: WaitStep, ctx: Mapping[str, Any], now: datetime) -> datetime:
    """When a wait step fires. `until` must render to an ISO 8601 timestamp with a UTC offset."""
    if step.seconds is not None:
        return now + timedelta(seconds=step.seconds)
    assert step.until is not None
    where = next(iter(string_references(step.until)), "until")
    value = render(step.until, ctx)
    if not isinstance(value, str):
        raise RunDataError(f"wait until needs an ISO 8601 timestamp, got {value!r}", path=where)
    try:
        fire_at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RunDataError(f"wait until: {value!r} is not an ISO 8601 timestamp", path=where) from exc
    if fire_at.tzinfo is None:
        raise RunDataError(f"wait until: {value!r} has no UTC offset", path=where)
    return fire_at


def catch_writes(step: ToolStep, catcher: Catcher, error: Any, ctx: Mapping[str, Any]) -> dict[str, Any]:
    """Run data a catcher stores when it fires: the error at its path and, when declared, the rendered
    `fallback_result` as the step's result (so the fallback continues with a minimum safe payload).

    Returns {result path: value}; apply with `templating.set_path`. Raises `TemplateError` if the
    fallback references missing data.
    """
    writes = {catcher.error_path(step.id): error}
    if catcher.has_fallback_result:
        writes[step.output_path] = render(catcher.fallback_result, ctx)
    return writes
