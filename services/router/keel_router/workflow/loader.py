"""Load workflow (and policy) YAML with precise locations: `file:line:col: field.path: message`.

YAML is read in three passes. A streaming event pass bounds size, nesting and alias expansion before
anything is built (so an alias bomb is refused without being expanded); a compose pass checks keys and
tags and indexes where each field sits; then pydantic validates, and its error locations are mapped back
to those YAML marks.

Scalars resolve with YAML 1.2 core rules, not PyYAML's YAML 1.1 defaults: `on`/`yes`/`no` stay strings,
`12:30` is not a base-60 integer, `010` is ten and dates stay strings. Workflow data is JSON, and
YAML 1.1 surprises there would silently change payloads.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import PROBLEMS_ERROR_TYPE, Loc, Problem, WorkflowError, format_loc, problems_from_context
from .models import Workflow
from .patterns import PATTERN_HINTS

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 40
#: Nodes after expanding aliases; real workflows are a few thousand at most.
MAX_NODES = 50_000

M = TypeVar("M", bound=BaseModel)

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


def _resolver(tag: str, pattern: str, first: str) -> None:
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), [*first] or [""])


_resolver("null", r"^(?:~|null|Null|NULL|)$", "~nN")
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])
_resolver("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_resolver("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
_resolver("float", r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$", "-+0123456789.")
_resolver("merge", r"^<<$", "<")


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)
    except ValueError as exc:  # Python refuses int() of more than ~4300 digits
        raise ConstructorError(None, None, f"integer out of range: {exc}", node.start_mark) from exc


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class Mark(Protocol):
    """A YAML position (pure-Python and libyaml marks both fit); 0-based."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


def _problem(file: str, mark: Mark | None, field: str, message: str) -> Problem:
    if mark is None:
        return Problem(file, None, None, field, message)
    return Problem(file, mark.line + 1, mark.column + 1, field, message)


def fail_at(file: str, mark: Mark | None, field: str, message: str) -> WorkflowError:
    return WorkflowError([_problem(file, mark, field, message)])


# --- pass 1: bounded shape --------------------------------------------------------------------------


def _check_shape(text: str, file: str) -> None:
    sizes: dict[str, int] = {}
    stack: list[tuple[str | None, int]] = []  # (anchor, total nodes before the collection started)
    total = 0
    documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise fail_at(file, event.start_mark, "<document>", "a file holds exactly one YAML document")
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append((event.anchor, total))
            total += 1
            if len(stack) > MAX_DEPTH:
                raise fail_at(file, event.start_mark, "<document>", f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            anchor, before = stack.pop()
            if anchor is not None:
                sizes[anchor] = total - before
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in stack):
                # PyYAML would build a cyclic object, which no JSON payload can be.
                raise fail_at(file, event.start_mark, "<document>", f"alias *{event.anchor} refers to itself")
            total += sizes.get(event.anchor or "", 1)
        if total > MAX_NODES:
            raise fail_at(
                file,
                event.start_mark,
                "<document>",
                f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
            )
    if documents == 0:
        raise fail_at(file, None, "<document>", "empty file")


# --- pass 2: compose, check keys and tags, index positions -------------------------------------------


def _check_nodes(root: Node, loader: _Loader, file: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            implicit = loader.resolve(ScalarNode, node.value, (True, False))  # type: ignore[no-untyped-call]
            if node.tag not in (_STR, implicit):
                problems.append(_problem(file, node.start_mark, "<document>", f"unsupported YAML tag {node.tag}"))
        elif isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                problems.append(_problem(file, node.start_mark, "<document>", f"unsupported YAML tag {node.tag}"))
            todo.extend(node.value)
        elif isinstance(node, MappingNode):
            if node.tag != _MAP:
                problems.append(_problem(file, node.start_mark, "<document>", f"unsupported YAML tag {node.tag}"))
            first: dict[str, Mark] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in first:
                        problems.append(
                            _problem(
                                file,
                                key.start_mark,
                                str(key.value),
                                f"duplicate key (also on line {first[key.value].line + 1})",
                            )
                        )
                    first.setdefault(key.value, key.start_mark)
                todo.extend((key, value))
    return problems


def _unsupported(file: str, node: Node) -> Problem:
    return _problem(file, node.start_mark, "<document>", f"unsupported YAML tag {node.tag}")


Index = dict[Loc, tuple[Mark | None, Mark]]


def _index(node: Node, loc: Loc, out: Index) -> None:
    # Runs after construction, when merge keys (<<) have been flattened into the mappings.
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                child = (*loc, str(key.value))
                out.setdefault(child, (key.start_mark, value.start_mark))
                _index(value, child, out)
    elif isinstance(node, SequenceNode):
        for i, value in enumerate(node.value):
            child = (*loc, i)
            out.setdefault(child, (None, value.start_mark))
            _index(value, child, out)


def _json_problems(data: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                yield loc, f"key {key!r} is not a string (quote it)"
            else:
                yield from _json_problems(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _json_problems(value, (*loc, i))
    elif isinstance(data, float) and not math.isfinite(data):
        yield loc, "number out of range"


def _mark_for(index: Index, root: Mark, loc: Loc) -> Mark:
    for n in range(len(loc), 0, -1):
        entry = index.get(loc[:n])
        if entry is not None:
            key_mark, value_mark = entry
            # The key line names the field; for a missing child, the parent mapping's start is the place.
            if n == len(loc) and key_mark is not None:
                return key_mark
            return value_mark
    return root


def parse_yaml(text: str, file: str) -> tuple[Any, Index, Mark]:
    """YAML text to JSON-like data plus a position index; raises `WorkflowError` on any problem."""
    try:
        _check_shape(text, file)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise fail_at(file, None, "<document>", "empty file")
            problems = _check_nodes(node, loader, file)
            if problems:
                raise WorkflowError(problems)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise fail_at(file, mark, "<document>", f"invalid YAML: {message}") from exc
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (NUL, most control characters, a lone surrogate): the reader
        # knows only its offset in the text, so the line and column are counted here.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"invalid YAML: character #x{char:04x}: {exc.reason}"
        raise WorkflowError([Problem(file, line, column, "<document>", message)]) from exc
    except yaml.YAMLError as exc:
        raise fail_at(file, None, "<document>", f"invalid YAML: {' '.join(str(exc).split())}") from exc
    index: Index = {}
    _index(node, (), index)
    bad = [
        _problem(file, _mark_for(index, node.start_mark, loc), format_loc(loc), msg)
        for loc, msg in _json_problems(data, ())
    ]
    if bad:
        raise WorkflowError(bad)
    return data, index, node.start_mark


# --- pass 3: validate and map errors back --------------------------------------------------------------


def _known_fields() -> set[str]:
    from . import models, policy

    names: set[str] = set()
    for module in (models, policy):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
                for name, field in obj.model_fields.items():
                    names.add(field.alias or name)
    return names


def _clean_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Drop the discriminator tag pydantic puts after steps[i] (e.g. steps.2.tool.retry -> steps.2.retry)."""
    # "[key]" marks an invalid mapping key; the key itself is the place to point at.
    out: list[str | int] = [p if isinstance(p, int) else str(p) for p in loc if p != "[key]"]
    if len(out) > 2 and out[0] == "steps" and isinstance(out[1], int) and isinstance(data, Mapping):
        steps = data.get("steps")
        if isinstance(steps, list) and out[1] < len(steps):
            step = steps[out[1]]
            if isinstance(step, Mapping) and step.get("kind") == out[2]:
                del out[2]
    return tuple(out)


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(field, sorted(_known_fields()), n=1)
        return f"unknown field '{field}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown step kind '{error['ctx']['tag']}' (expected one of {error['ctx']['expected_tags']})"
    if kind == "union_tag_not_found":
        return "a step needs a kind: tool, decide, choice, approval, human, wait, succeed or fail"
    bound = _BOUNDS.get(kind)
    if bound is not None:
        op, key = bound
        limit = error["ctx"][key]
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        return f"must be {op} {shown}"
    if kind == "string_pattern_mismatch" and error["ctx"]["pattern"] in PATTERN_HINTS:
        return PATTERN_HINTS[error["ctx"]["pattern"]]
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def validation_problems(exc: ValidationError, data: Any, index: Index, root: Mark, file: str) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors():
        prefix = _clean_loc(error["loc"], data)
        if error["type"] == PROBLEMS_ERROR_TYPE:
            for rel, msg in problems_from_context(error.get("ctx")):
                loc = (*prefix, *rel)
                problems.append(_problem(file, _mark_for(index, root, loc), format_loc(loc), msg))
        else:
            problems.append(_problem(file, _mark_for(index, root, prefix), format_loc(prefix), _message(error, prefix)))
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return problems


def validate_text(model: type[M], text: str, file: str) -> M:
    data, index, root = parse_yaml(text, file)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WorkflowError(validation_problems(exc, data, index, root, file)) from None


def read_text(path: Path) -> str:
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise fail_at(file, None, "<document>", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        raise fail_at(file, None, "<document>", f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:  # it grew between stat and read
        raise fail_at(file, None, "<document>", f"file is over the limit of {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail_at(file, None, "<document>", f"not UTF-8 text (byte {exc.start})") from exc


# --- workflows -----------------------------------------------------------------------------------------


def load_workflow_text(text: str, file: str = "<string>") -> Workflow:
    """Validate workflow YAML text; `file` is the name used in error locations."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise fail_at(file, None, "<document>", f"document is over the limit of {MAX_FILE_BYTES} bytes")
    return validate_text(Workflow, text, file)


def load_workflow(path: str | Path) -> Workflow:
    path = Path(path)
    workflow = validate_text(Workflow, read_text(path), str(path))
    workflow._source = path
    return workflow


def workflow_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_workflows(directory: str | Path) -> dict[str, Workflow]:
    """Every `*.yaml` / `*.yml` in a directory by name; all problems of all files in one `WorkflowError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise fail_at(str(directory), None, "<directory>", "not a directory")
    found: dict[str, Workflow] = {}
    problems: list[Problem] = []
    for path in workflow_files(directory):
        try:
            text = read_text(path)
            data, index, root = parse_yaml(text, str(path))
            try:
                workflow = Workflow.model_validate(data)
            except ValidationError as exc:
                problems.extend(validation_problems(exc, data, index, root, str(path)))
                continue
        except WorkflowError as exc:
            problems.extend(exc.problems)
            continue
        workflow._source = path
        if workflow.name in found:
            mark = _mark_for(index, root, ("name",))
            problems.append(
                _problem(
                    str(path),
                    mark,
                    "name",
                    f"workflow name '{workflow.name}' is already used by {found[workflow.name].source}",
                )
            )
            continue
        found[workflow.name] = workflow
    if problems:
        raise WorkflowError(problems)
    return found
