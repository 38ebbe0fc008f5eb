"""Finding tool adapters by name.

Tools are registered as Python entry points in the `keel.tools` group (`name = "module:function"`), so
a user package adds tools by declaring entry points, with no change to Keel. The built-in tools are
registered the same way in this package's own metadata.
"""

import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import JsonValue

from keel_executor.errors import UnknownToolError

ENTRY_POINT_GROUP = "keel.tools"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ToolContext:
    """What a tool knows about the attempt it is running, beyond its input."""

    run_id: str
    workflow: str
    step_id: str
    attempt: int
    tenant: str
    correlation_id: str
    idempotency_key: str
    timeout_seconds: float
    data_dir: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def traceparent(self) -> str:
        """A W3C traceparent whose trace id is the run's correlation id (when that is a 128-bit hex id, as
        Keel's own are), so downstream logs join up; any other correlation id is hashed into one."""
        trace = self.correlation_id.replace("-", "")
        if not _TRACE_ID.fullmatch(trace) or not trace.strip("0"):
            trace = hashlib.sha256(self.correlation_id.encode()).hexdigest()[:32]
        parent = hashlib.sha256(f"{self.run_id}/{self.step_id}/{self.attempt}".encode()).hexdigest()[:16]
        return f"00-{trace}-{parent}-01"

    def headers(self) -> dict[str, str]:
        """Headers that carry the write's identity into the system of record."""
        return {
            "Idempotency-Key": self.idempotency_key,
            "X-Keel-Run-Id": self.run_id,
            "X-Keel-Step-Id": self.step_id,
            "traceparent": self.traceparent(),
        }


Tool = Callable[[ToolContext, dict[str, JsonValue]], Awaitable[dict[str, JsonValue]]]


class ToolRegistry:
    def __init__(self, tools: Mapping[str, Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = dict(tools or {})

    @classmethod
    def from_entry_points(cls) -> "ToolRegistry":
        registry = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register(ep.name, ep.load())
        return registry

    def register(self, name: str, tool: Tool) -> None:
        if name in self._tools and self._tools[name] is not tool:
            raise ValueError(f"tool {name!r} is registered twice")
        self._tools[name] = tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(f"no tool named {name!r} is registered (known: {sorted(self._tools)})") from None

    def names(self) -> list[str]:
        return sorted(self._tools)
