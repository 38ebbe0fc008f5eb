"""The policy file: which action classes always need approval, and the caps that stop runaway runs.

The policy applies whatever a workflow says: a write step whose `action_class` is listed needs approval
from the listed role even if the workflow has no approval step for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from .loader import MAX_FILE_BYTES, fail_at, read_text, validate_text
from .models import ActionClass, Step, Token, ToolStep

#: Used when no policy file is given. Every action class is gated: forgetting the file must not turn
#: approvals off.
DEFAULT_REQUIRE_APPROVAL: dict[ActionClass, str] = {
    "money": "finance",
    "access": "security",
    "delete": "ops",
    "customer": "support_lead",
    "production": "ops",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Caps(_Model):
    """Hitting a cap moves the run to `blocked` with the reason."""

    max_steps_per_run: int = Field(200, ge=1, description="Steps a run may start, loops included")
    max_total_attempts: int = Field(100, ge=1, description="Tool attempts a run may make, retries included")
    max_run_duration_seconds: int = Field(30 * 24 * 3600, ge=1, description="Wall time from the run's start")


class Limits(_Model):
    max_payload_bytes: int = Field(
        256 * 1024,
        ge=1,
        description="Largest rendered tool input, decide payload or human input (JSON bytes)",
    )
    max_run_data_bytes: int = Field(4 * 1024 * 1024, ge=1, description="Largest run data (all results)")


class Policy(_Model):
    version: int = Field(1, ge=1)
    require_approval: dict[ActionClass, Token] = Field(
        default_factory=lambda: dict(DEFAULT_REQUIRE_APPROVAL),
        description="Action class -> role that must approve any write of that class",
    )
    caps: Caps = Field(default_factory=Caps)
    limits: Limits = Field(default_factory=Limits)


@dataclass(frozen=True)
class ApprovalRequirement:
    """Approvals a step needs by policy: one from each role (a step can be, say, money and customer)."""

    roles: tuple[str, ...]
    action_classes: tuple[str, ...]
    reason: str


def required_approval(step: Step, policy: Policy) -> ApprovalRequirement | None:
    """What the policy demands before this step may run; None when it demands nothing.

    Only write tool steps are gated: reads change nothing, and the loader refuses action classes on reads.
    """
    if not isinstance(step, ToolStep) or step.side_effect != "write":
        return None
    classes = tuple(c for c in step.action_class if c in policy.require_approval)
    if not classes:
        return None
    roles: list[str] = []
    for c in classes:
        role = policy.require_approval[c]
        if role not in roles:
            roles.append(role)
    parts = ", ".join(f"{c} -> {policy.require_approval[c]}" for c in classes)
    return ApprovalRequirement(tuple(roles), classes, f"policy requires approval for step '{step.id}': {parts}")


@dataclass(frozen=True)
class RunCounters:
    """What a run has used so far; check before starting the next step or attempt."""

    steps_started: int
    total_attempts: int
    elapsed_seconds: float


@dataclass(frozen=True)
class CapHit:
    cap: str
    limit: int
    value: float
    reason: str


def check_caps(counters: RunCounters, policy: Policy) -> CapHit | None:
    """The first cap the run has reached, or None. A cap is reached at equality: with
    `max_steps_per_run: 3`, a run that has started 3 steps may not start a fourth."""
    caps = policy.caps
    for cap, value, limit, what in (
        ("max_steps_per_run", counters.steps_started, caps.max_steps_per_run, "steps started"),
        ("max_total_attempts", counters.total_attempts, caps.max_total_attempts, "tool attempts made"),
        (
            "max_run_duration_seconds",
            counters.elapsed_seconds,
            caps.max_run_duration_seconds,
            "seconds elapsed",
        ),
    ):
        if value >= limit:
            return CapHit(cap, limit, value, f"cap {cap} reached: {value:g} {what}, limit {limit}")
    return None


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON of `value` (pydantic's serializer: checked before every step, and
    several times faster than `json.dumps`)."""
    return len(to_json(value))


def check_payload(value: Any, policy: Policy) -> str | None:
    """Why a payload is refused (too large), or None."""
    size = json_size(value)
    if size > policy.limits.max_payload_bytes:
        return f"payload is {size} bytes; limit max_payload_bytes is {policy.limits.max_payload_bytes}"
    return None


def check_run_data(data: Any, policy: Policy) -> CapHit | None:
    size = json_size(data)
    limit = policy.limits.max_run_data_bytes
    if size > limit:
        why = f"limit max_run_data_bytes exceeded: run data is {size} bytes, limit {limit}"
        return CapHit("max_run_data_bytes", limit, size, why)
    return None


def load_policy_text(text: str, file: str = "<string>") -> Policy:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise fail_at(file, None, "<document>", f"document is over the limit of {MAX_FILE_BYTES} bytes")
    return validate_text(Policy, text, file)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    return validate_text(Policy, read_text(path), str(path))
