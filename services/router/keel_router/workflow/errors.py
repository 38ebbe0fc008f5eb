"""Located problems in workflow and policy files, and errors raised while interpreting run data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic_core import PydanticCustomError

#: A location inside a document: mapping keys and list indexes, as pydantic reports them.
Loc = tuple[str | int, ...]

#: The pydantic error type our own validators use to report several problems with precise locations.
#: pydantic only knows the location of the validator that raised, so the relative locations travel in
#: the error context and the loader joins them to that prefix.
PROBLEMS_ERROR_TYPE = "keel_problems"


def format_loc(loc: Loc) -> str:
    """`("steps", 2, "retry", 0, "backoff_rate")` -> `steps[2].retry[0].backoff_rate`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<document>"


@dataclass(frozen=True)
class Problem:
    """One mistake in a file, with enough location for an editor jump: file:line:column: field: message."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return printable(f"{where}: {self.field}: {self.message}")


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped (`\\n`, `\\x1b`, `\\u202e`): a field
    name or value quoted from a file can then neither start a line of its own nor reorder or recolour the
    terminal it is printed on."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class WorkflowError(Exception):
    """A workflow or policy file (or a directory of them) is invalid; `problems` lists every mistake found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid workflow")


class RunDataError(Exception):
    """Run data does not fit what the workflow expects (a missing reference, a wrongly typed value).

    The router sends the run to `needs_human`, naming `path` as the missing or wrong piece.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


def raise_problems(problems: Sequence[tuple[Loc, str]]) -> NoReturn:
    """Raise from a pydantic validator with problems located relative to the validated object."""
    summary = "; ".join(f"{format_loc(loc)}: {msg}" if loc else msg for loc, msg in problems)
    raise PydanticCustomError(
        PROBLEMS_ERROR_TYPE, "{summary}", {"summary": summary, "problems": [tuple(p) for p in problems]}
    )


def problems_from_context(ctx: dict[str, Any] | None) -> list[tuple[Loc, str]]:
    if not ctx:
        return []
    raw = ctx.get("problems") or []
    return [(tuple(loc), str(msg)) for loc, msg in raw]
