"""The field-by-field difference between a record's current payload and the one a write would send."""

from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

Change = Literal["added", "removed", "changed", "unchanged"]


@dataclass(frozen=True)
class DiffLine:
    path: str
    change: Change
    before: JsonValue | None
    after: JsonValue | None


def _flatten(value: JsonValue, prefix: str, out: dict[str, JsonValue]) -> None:
    # Objects are walked key by key so a change deep inside shows as that one field; lists and scalars
    # are compared whole, since list positions rarely mean the same thing before and after a write.
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix or "(value)"] = value


def diff(before: dict[str, JsonValue], after: dict[str, JsonValue]) -> list[DiffLine]:
    old: dict[str, JsonValue] = {}
    new: dict[str, JsonValue] = {}
    _flatten(before, "", old)
    _flatten(after, "", new)
    lines: list[DiffLine] = []
    for path in sorted(old.keys() | new.keys()):
        if path not in old:
            lines.append(DiffLine(path, "added", None, new[path]))
        elif path not in new:
            lines.append(DiffLine(path, "removed", old[path], None))
        else:
            change: Change = "unchanged" if old[path] == new[path] else "changed"
            lines.append(DiffLine(path, change, old[path], new[path]))
    return lines
