"""Retriers and catchers with AWS Step Functions semantics, as pure functions.

- Retriers are tried in order; the FIRST whose `error_equals` matches the error applies, even when it is
  exhausted (then the error goes to the catchers: later retriers are not consulted).
- Each retrier counts its own attempts. Retry number n (0-based, for that retrier) waits
  `min(interval_seconds * backoff_rate ** n, max_delay_seconds)`; with `jitter: full` the wait is drawn
  uniformly from [0, that delay].
- `max_attempts: 0` means the retrier never retries (it only stops later retriers from matching).
- Catchers are tried in order; the first match routes the run to its `next` step with the error stored at
  its `result_path`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel_contracts.errors import ALL_ERRORS, ErrorClass

from .patterns import NAME_PATTERN, RESULT_PATH_PATTERN

#: An error class or "all". A Literal rather than the StrEnum so the published schema lists the values
#: and strict validation accepts the YAML strings; a unit test keeps it in step with `ErrorClass`.
ErrorMatch = Literal["transient", "permanent", "auth", "business_rule", "unknown_outcome", "timeout", "refused", "all"]
ERROR_MATCHES: tuple[str, ...] = get_args(ErrorMatch)

#: No single retry wait exceeds this, whatever the backoff arithmetic says (run caps bound the total).
DELAY_CEILING_SECONDS = 365 * 24 * 3600.0

_MODEL_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _check_error_equals(value: list[str]) -> list[str]:
    if ALL_ERRORS in value and len(value) > 1:
        raise ValueError("'all' must appear alone in error_equals")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise ValueError(f"listed more than once: {', '.join(dupes)}")
    return value


def matches(error_equals: Sequence[str], error_class: ErrorClass | str) -> bool:
    return ALL_ERRORS in error_equals or str(error_class) in error_equals


class Retrier(BaseModel):
    model_config = _MODEL_CONFIG

    error_equals: list[ErrorMatch] = Field(min_length=1, description="Error classes this retrier handles")
    interval_seconds: float = Field(1.0, gt=0, le=DELAY_CEILING_SECONDS, description="Wait before retry 1")
    backoff_rate: float = Field(2.0, ge=1, le=1000, description="Multiplier applied to the wait per retry")
    max_delay_seconds: float | None = Field(None, gt=0, le=DELAY_CEILING_SECONDS, description="Cap on one wait")
    max_attempts: int = Field(3, ge=0, le=1000, description="Retries by this retrier; 0 never retries")
    jitter: Literal["full", "none"] = Field("none", description="full: wait uniformly in [0, delay]")

    @field_validator("error_equals")
    @classmethod
    def check_error_equals(cls, value: list[str]) -> list[str]:
        return _check_error_equals(value)

    def matches(self, error_class: ErrorClass | str) -> bool:
        return matches(self.error_equals, error_class)


class Catcher(BaseModel):
    model_config = _MODEL_CONFIG

    error_equals: list[ErrorMatch] = Field(min_length=1, description="Error classes this catcher handles")
    next: str = Field(pattern=NAME_PATTERN, description="Fallback step")
    result_path: str | None = Field(
        None,
        pattern=RESULT_PATH_PATTERN,
        description="Where the error goes in run data; default errors.<step id>",
    )
    fallback_result: Any = Field(
        None,
        description="Template stored as the step's result when caught, so the fallback can continue with a "
        "minimum safe payload; omit to store no result",
    )

    @field_validator("error_equals")
    @classmethod
    def check_error_equals(cls, value: list[str]) -> list[str]:
        return _check_error_equals(value)

    def matches(self, error_class: ErrorClass | str) -> bool:
        return matches(self.error_equals, error_class)

    def error_path(self, step_id: str) -> str:
        return self.result_path or f"errors.{step_id}"

    @property
    def has_fallback_result(self) -> bool:
        return "fallback_result" in self.model_fields_set


@dataclass(frozen=True)
class RetryDecision:
    """Retry the step: wait `delay_seconds`, and count one more attempt for `retrier_index`."""

    retrier_index: int
    #: 1-based number of this retry among those made by this retrier.
    attempt: int
    delay_seconds: float
    #: The delay before jitter (after the max_delay cap).
    base_delay_seconds: float
    reason: str


def backoff_delay(retrier: Retrier, retries_done: int) -> float:
    """Delay before the next retry of this retrier, without jitter."""
    try:
        delay = retrier.interval_seconds * retrier.backoff_rate**retries_done
    except OverflowError:
        delay = math.inf
    if retrier.max_delay_seconds is not None:
        delay = min(delay, retrier.max_delay_seconds)
    return min(delay, DELAY_CEILING_SECONDS)


def _count(attempts: Mapping[int, int] | Sequence[int], index: int) -> int:
    if isinstance(attempts, Mapping):
        return int(attempts.get(index, 0))
    return int(attempts[index]) if index < len(attempts) else 0


def plan_retry(
    retriers: Sequence[Retrier],
    error_class: ErrorClass | str,
    attempts_so_far_per_retrier: Mapping[int, int] | Sequence[int],
    rng: random.Random | None = None,
) -> RetryDecision | None:
    """Whether and when to retry after `error_class`; None means the error goes to the catchers.

    `attempts_so_far_per_retrier` holds the retries already made by each retrier (by index; a mapping or
    a list, absent means 0). `rng` draws full jitter; pass a seeded one for reproducible tests.
    """
    for index, retrier in enumerate(retriers):
        if not retrier.matches(error_class):
            continue
        done = _count(attempts_so_far_per_retrier, index)
        if done >= retrier.max_attempts:
            return None
        base = backoff_delay(retrier, done)
        delay = base
        if retrier.jitter == "full":
            delay = (rng or random.Random()).uniform(0.0, base)
        reason = f"{error_class}: retry[{index}] attempt {done + 1} of {retrier.max_attempts} after {delay:.3f}s"
        return RetryDecision(index, done + 1, delay, base, reason)
    return None


def match_catcher(catchers: Sequence[Catcher], error_class: ErrorClass | str) -> Catcher | None:
    """The first catcher whose error_equals matches, in declaration order."""
    for catcher in catchers:
        if catcher.matches(error_class):
            return catcher
    return None
