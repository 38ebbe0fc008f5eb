"""Fault specs and the board of armed faults.

Grammar of a spec (header `X-Sandbox-Fault` or the `fault` field of `POST /_faults`)::

    spec  := fault ("," fault)*            at most one fault other than latency
    fault := "latency:" MS
           | "429" [":" RETRY_AFTER_S]
           | "500" | "502" | "503"
           | "drop"
           | "commit_then_timeout" [":" HANG_MS]
           | "commit_then_500"

Latency is served first, then the other fault, if any.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_LATENCY_MS = 600_000
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_HANG_MS = 30_000


class FaultKind(StrEnum):
    TOO_MANY_REQUESTS = "429"
    INTERNAL_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    DROP = "drop"
    COMMIT_THEN_TIMEOUT = "commit_then_timeout"
    COMMIT_THEN_500 = "commit_then_500"

    @property
    def commits_first(self) -> bool:
        return self in (FaultKind.COMMIT_THEN_TIMEOUT, FaultKind.COMMIT_THEN_500)


STATUS_OF: dict[FaultKind, int] = {
    FaultKind.TOO_MANY_REQUESTS: 429,
    FaultKind.INTERNAL_ERROR: 500,
    FaultKind.BAD_GATEWAY: 502,
    FaultKind.UNAVAILABLE: 503,
}


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class FaultSpec:
    kind: FaultKind | None = None
    latency_ms: int = 0
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    hang_ms: int = DEFAULT_HANG_MS

    def describe(self) -> str:
        parts: list[str] = []
        if self.latency_ms:
            parts.append(f"latency:{self.latency_ms}")
        if self.kind is FaultKind.TOO_MANY_REQUESTS:
            parts.append(f"429:{self.retry_after_s}")
        elif self.kind is FaultKind.COMMIT_THEN_TIMEOUT:
            parts.append(f"commit_then_timeout:{self.hang_ms}")
        elif self.kind is not None:
            parts.append(self.kind.value)
        return ",".join(parts)


def _bounded_int(text: str, what: str, *, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FaultSpecError(f"{what} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise FaultSpecError(f"{what} must be between {low} and {high}, got {value}")
    return value


def parse_fault_spec(text: str) -> FaultSpec:
    tokens = [token.strip() for token in text.split(",")]
    if not any(tokens):
        raise FaultSpecError("empty fault spec")
    kind: FaultKind | None = None
    latency_ms: int | None = None
    retry_after_s = DEFAULT_RETRY_AFTER_S
    hang_ms = DEFAULT_HANG_MS
    for token in tokens:
        name, _, argument = token.partition(":")
        name = name.strip().lower()
        argument = argument.strip()
        if name == "latency":
            if latency_ms is not None:
                raise FaultSpecError("latency given twice")
            if not argument:
                raise FaultSpecError("latency needs milliseconds, e.g. latency:250")
            latency_ms = _bounded_int(argument, "latency", low=0, high=MAX_LATENCY_MS)
            continue
        try:
            parsed = FaultKind(name)
        except ValueError:
            known = ", ".join(["latency:<ms>", *(k.value for k in FaultKind)])
            raise FaultSpecError(f"unknown fault {token!r}; known: {known}") from None
        if kind is not None:
            raise FaultSpecError(f"only one fault besides latency per spec, got {kind.value} and {parsed.value}")
        kind = parsed
        if parsed is FaultKind.TOO_MANY_REQUESTS and argument:
            retry_after_s = _bounded_int(argument, "Retry-After", low=0, high=86_400)
        elif parsed is FaultKind.COMMIT_THEN_TIMEOUT and argument:
            hang_ms = _bounded_int(argument, "hang", low=0, high=MAX_LATENCY_MS)
        elif argument:
            raise FaultSpecError(f"{parsed.value} takes no argument, got {token!r}")
    return FaultSpec(kind=kind, latency_ms=latency_ms or 0, retry_after_s=retry_after_s, hang_ms=hang_ms)


@dataclass
class ArmedFault:
    id: int
    spec: FaultSpec
    method: str
    path_prefix: str
    remaining: int | None
    probability: float
    seed: int | None
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, method: str, path: str) -> bool:
        if self.remaining == 0:
            return False
        if self.method != "*" and self.method != method.upper():
            return False
        return path.startswith(self.path_prefix)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fault": self.spec.describe(),
            "method": self.method,
            "path_prefix": self.path_prefix,
            "remaining": self.remaining,
            "probability": self.probability,
            "seed": self.seed,
            "fired": self.fired,
        }


class FaultBoard:
    """Faults armed through `/_faults`, kept in memory: the sandbox runs as a single process."""

    def __init__(self) -> None:
        self._armed: list[ArmedFault] = []
        self._next_id = 1
        self.fired_total = 0

    def arm(
        self,
        spec: FaultSpec,
        *,
        method: str = "*",
        path_prefix: str = "/",
        count: int | None = 1,
        probability: float = 1.0,
        seed: int | None = None,
    ) -> ArmedFault:
        if count is not None and count < 1:
            raise FaultSpecError("count must be at least 1, or null for unlimited")
        if not 0.0 < probability <= 1.0:
            raise FaultSpecError("probability must be in (0, 1]")
        if not path_prefix.startswith("/"):
            raise FaultSpecError("path_prefix must start with '/'")
        armed = ArmedFault(
            id=self._next_id,
            spec=spec,
            method=method.upper(),
            path_prefix=path_prefix,
            remaining=count,
            probability=probability,
            seed=seed,
            rng=random.Random(seed),
        )
        self._next_id += 1
        self._armed.append(armed)
        return armed

    def take(self, method: str, path: str) -> FaultSpec | None:
        """The first armed fault that matches and wins its draw fires, and is counted down."""
        for armed in self._armed:
            if not armed.matches(method, path):
                continue
            if armed.probability < 1.0 and armed.rng.random() >= armed.probability:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
            armed.fired += 1
            self.fired_total += 1
            return armed.spec
        return None

    def count_fired(self) -> None:
        self.fired_total += 1

    def armed(self) -> list[ArmedFault]:
        return list(self._armed)

    def disarm(self, fault_id: int) -> bool:
        before = len(self._armed)
        self._armed = [armed for armed in self._armed if armed.id != fault_id]
        return len(self._armed) < before

    def clear(self) -> int:
        cleared = len(self._armed)
        self._armed = []
        return cleared

    def reset(self) -> None:
        self.clear()
        self._next_id = 1
        self.fired_total = 0
