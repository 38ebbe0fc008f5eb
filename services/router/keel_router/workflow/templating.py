"""Safe templating of step inputs from run data.

Syntax (the whole language):

- `"${steps.lookup.customer.id}"`: a string that is exactly one reference becomes the referenced
  value with its JSON type (object, list, number, bool, null or string).
- `"Refund for ${input.customer}"`: references embedded in text are stringified (strings as-is, other
  values as compact JSON).
- `"$${"` is a literal `${`.
- A path is dot-separated segments of letters, digits, `_` and `-`; a numeric segment indexes a list.

Templates are JSON values; every string inside them (not the keys) is a template. Rendering is a single
pass: substituted values are data and are never parsed again, so `${...}` arriving in trigger input or a
tool result stays inert text.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Loc, RunDataError

_SEGMENT = r"[A-Za-z0-9_-]+"
PATH_RE = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*$")

#: Top-level names of the templating context (see `make_context`).
CONTEXT_ROOTS = ("input", "steps", "run", "human", "errors")
#: Keys of `run` in the context.
RUN_KEYS = ("id", "workflow", "intent_key")


class TemplateError(RunDataError):
    """A template cannot be rendered: malformed, or it references run data that is not there."""


class TemplateSyntaxError(TemplateError):
    """A template is malformed (unterminated `${`, bad path); raised at load time."""


@dataclass(frozen=True)
class _Ref:
    path: str


def _parse(text: str) -> list[str | _Ref]:
    parts: list[str | _Ref] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("$", i)
        if j == -1:
            buf.append(text[i:])
            break
        if j > i:
            buf.append(text[i:j])
        if text.startswith("$${", j):
            buf.append("${")
            i = j + 3
        elif text.startswith("${", j):
            end = text.find("}", j + 2)
            if end == -1:
                raise TemplateSyntaxError(f"unterminated '${{' at offset {j} (write '$${{' for a literal)")
            path = text[j + 2 : end].strip()
            if not PATH_RE.match(path):
                raise TemplateSyntaxError(
                    f"invalid reference '{text[j : end + 1]}': "
                    "a path is dot-separated segments of letters, digits, '_' and '-'"
                )
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(_Ref(path))
            i = end + 1
        else:
            buf.append("$")
            i = j + 1
    tail = "".join(buf)
    if tail:
        parts.append(tail)
    return parts


def split_path(path: str) -> list[str]:
    return path.split(".")


def lookup(ctx: Any, path: str) -> Any:
    """Value at a dotted path in run data; raises `TemplateError` naming the first missing piece."""
    cur = ctx
    walked: list[str] = []
    for seg in split_path(path):
        if isinstance(cur, Mapping) and seg in cur:
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            where = ".".join(walked) or "run data"
            if isinstance(cur, Mapping):
                why = f"{where} has no key '{seg}'"
            elif isinstance(cur, list):
                why = f"{where} is a list of {len(cur)} item(s); '{seg}' is not an index in it"
            else:
                why = f"{where} is {_kind(cur)}, not an object"
            raise TemplateError(f"missing value '{path}': {why}", path=path)
        walked.append(seg)
    return cur


def has_path(ctx: Any, path: str) -> bool:
    try:
        lookup(ctx, path)
    except TemplateError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_string(text: str, ctx: Mapping[str, Any]) -> Any:
    parts = _parse(text)
    if len(parts) == 1 and isinstance(parts[0], _Ref):
        # Copy so later mutation of the rendered payload can never write back into run data.
        return copy.deepcopy(lookup(ctx, parts[0].path))
    return "".join(p if isinstance(p, str) else stringify(lookup(ctx, p.path)) for p in parts)


def render(template: Any, ctx: Mapping[str, Any]) -> Any:
    """Render a JSON template against run data. Raises `TemplateError` (with `.path`) on a missing value."""
    if isinstance(template, str):
        return render_string(template, ctx)
    if isinstance(template, Mapping):
        return {k: render(v, ctx) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, ctx) for v in template]
    return template


def template_strings(template: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Every string in a JSON template with its location inside the template."""
    if isinstance(template, str):
        yield loc, template
    elif isinstance(template, Mapping):
        for k, v in template.items():
            yield from template_strings(v, (*loc, str(k)))
    elif isinstance(template, list):
        for i, v in enumerate(template):
            yield from template_strings(v, (*loc, i))


def string_references(text: str) -> list[str]:
    return [p.path for p in _parse(text) if isinstance(p, _Ref)]


def references(template: Any) -> set[str]:
    """Paths a template references; raises `TemplateSyntaxError` when malformed."""
    return {ref for _, text in template_strings(template) for ref in string_references(text)}


def make_context(
    *,
    trigger_input: Any,
    steps: Mapping[str, Any] | None = None,
    run_id: str,
    workflow: str,
    intent_key: str,
    human: Any = None,
    errors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run data templates and conditions see. `human` is the last human input (absent until one)."""
    ctx: dict[str, Any] = {
        "input": trigger_input,
        "steps": dict(steps or {}),
        "run": {"id": run_id, "workflow": workflow, "intent_key": intent_key},
        "errors": dict(errors or {}),
    }
    if human is not None:
        ctx["human"] = human
    return ctx


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Store `value` at a dotted result path, creating objects on the way (how results enter run data)."""
    segs = split_path(path)
    cur = data
    for seg in segs[:-1]:
        nxt = cur.get(seg)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[seg] = nxt
        cur = nxt
    cur[segs[-1]] = value
