"""Verify-first: what the executor does when a write may or may not have landed.

After an `unknown_outcome` the write is never sent again blindly. A read-back decides:

- it found the write's record: the attempt succeeded, with that record as its output (`verified: true`);
- it found nothing: the write did not land, so it is sent again at once, with the SAME idempotency key
  (if it did land after all, the system of record collapses the two into one write);
- it could not tell (it failed, or answered something else): the attempt fails with `unknown_outcome`
  and a message saying so, and the workflow's retry/catch rules decide (escalate, or fail the run).

The read-back is the step's `verify` call (a tool and its rendered input, from the workflow), or else
the tool's own `verify` attribute (an adapter that knows how to look its writes up, e.g. by key), called
with the write's input. Both return `{"found": bool, "record": {...}}`.

The loop is bounded: one resend per attempt and one read-back after each unknown outcome, so a system
that keeps timing out costs at most two writes' and two reads' time before the router takes over again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from keel_contracts.commands import VerifySpec
from keel_contracts.errors import ErrorClass
from keel_executor.errors import NoReadBack, UnknownOutcomeError, classify
from keel_executor.tools.registry import Tool, ToolContext, ToolRegistry
from keel_shared.logging import get_logger

log = get_logger(__name__)

#: Times a write is sent again after a read-back found nothing, per attempt.
MAX_RESENDS = 1

Call = Callable[[Tool, dict[str, JsonValue]], Awaitable[dict[str, JsonValue]]]


@dataclass(frozen=True)
class Verdict:
    found: bool | None  # None: the read-back could not tell
    record: dict[str, JsonValue] | None = None
    why: str = ""


@dataclass(frozen=True)
class ReadBack:
    """A way to ask whether the write landed: a tool and the input to call it with."""

    tool: Tool
    input: dict[str, JsonValue]
    name: str

    @classmethod
    def for_step(
        cls, spec: VerifySpec | None, tool: Tool, tool_name: str, data: dict[str, JsonValue], tools: ToolRegistry
    ) -> ReadBack | None:
        """The workflow's verify call wins (its author chose it); else the adapter's own, if it has one."""
        if spec is not None:
            return cls(tools.get(spec.tool), dict(spec.input), spec.tool)
        own = getattr(tool, "verify", None)
        if callable(own):
            return cls(own, data, f"{tool_name}.verify")
        return None


def read_verdict(result: Any) -> Verdict:
    """Interpret a read-back's answer; anything but `found: true|false` means it could not tell."""
    if not isinstance(result, Mapping) or not isinstance(result.get("found"), bool):
        return Verdict(None, why=f"the read-back answered {str(result)[:200]!r}, not {{found: true|false}}")
    if not result["found"]:
        return Verdict(False, why="the read-back found no record of the write")
    record = result.get("record")
    return Verdict(True, dict(record) if isinstance(record, Mapping) else {"record": record}, "record found")


def verified_output(record: dict[str, JsonValue] | None) -> dict[str, JsonValue]:
    """A found record as the step's output, marked so the timeline shows it came from a read-back."""
    return {**(record or {}), "verified": True}


async def check(read_back: ReadBack, call: Call) -> Verdict:
    try:
        result = await call(read_back.tool, read_back.input)
    except NoReadBack:
        raise
    except Exception as exc:  # a failed read-back is an answer too: "cannot tell"
        return Verdict(None, why=f"{read_back.name} failed ({classify(exc)}: {str(exc)[:300]})")
    return read_verdict(result)


async def resolve_unknown(
    first: BaseException, write: Tool, data: dict[str, JsonValue], read_back: ReadBack, call: Call, ctx: ToolContext
) -> dict[str, JsonValue]:
    """After `first` (an unknown outcome): the write's output, or a typed error to record."""
    error: BaseException = first
    for resend in range(MAX_RESENDS + 1):
        try:
            verdict = await check(read_back, call)
        except NoReadBack:
            raise error from None  # no way to look it up: the outcome stays unknown, as reported
        log.info("verified", step_id=ctx.step_id, found=verdict.found, why=verdict.why, resend=resend)
        if verdict.found:
            return verified_output(verdict.record)
        if verdict.found is None:
            raise UnknownOutcomeError(f"{error}; verification could not decide: {verdict.why}") from error
        if resend == MAX_RESENDS:
            break
        try:
            # The read-back says it did not land: send it again, now, under the same idempotency key.
            return await call(write, data)
        except Exception as exc:
            if classify(exc) is not ErrorClass.UNKNOWN_OUTCOME:
                raise
            error = exc
    raise UnknownOutcomeError(
        f"{error}; verification could not decide: the read-back found nothing after {MAX_RESENDS} resend(s) "
        "under the same idempotency key"
    ) from error


async def verify_before_resending(read_back: ReadBack, call: Call) -> dict[str, JsonValue] | None:
    """Before re-running a write whose previous holder died mid-call: the found record's output, or None
    when the write did not land (send it). Raises when the read-back cannot tell."""
    try:
        verdict = await check(read_back, call)
    except NoReadBack:
        return None  # as for a tool without a read-back: resend under the same key
    if verdict.found:
        return verified_output(verdict.record)
    if verdict.found is None:
        raise UnknownOutcomeError(
            f"the previous executor stopped mid-call and verification could not decide: {verdict.why}"
        )
    return None
