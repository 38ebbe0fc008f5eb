"""Retry and catch with Step Functions semantics."""

import random
from typing import get_args

import pytest

from keel_contracts.errors import ALL_ERRORS, ErrorClass
from keel_router.workflow.retry import (
    DELAY_CEILING_SECONDS,
    Catcher,
    ErrorMatch,
    Retrier,
    backoff_delay,
    match_catcher,
    plan_retry,
)


def retrier(**kw: object) -> Retrier:
    return Retrier.model_validate({"error_equals": ["transient"], **kw})


def test_error_match_literal_tracks_the_contract_enum() -> None:
    assert set(get_args(ErrorMatch)) == {e.value for e in ErrorClass} | {ALL_ERRORS}


def test_defaults_follow_the_documented_values() -> None:
    r = retrier()
    assert (r.interval_seconds, r.backoff_rate, r.max_delay_seconds, r.max_attempts, r.jitter) == (
        1.0,
        2.0,
        None,
        3,
        "none",
    )


def test_delays_grow_by_backoff_rate_without_jitter() -> None:
    retriers = [retrier(interval_seconds=3, backoff_rate=1.5, max_attempts=4)]
    delays = []
    for done in range(4):
        decision = plan_retry(retriers, ErrorClass.TRANSIENT, [done])
        assert decision is not None
        assert decision.retrier_index == 0 and decision.attempt == done + 1
        delays.append(decision.delay_seconds)
    assert delays == [3.0, 4.5, 6.75, 10.125]
    assert plan_retry(retriers, ErrorClass.TRANSIENT, [4]) is None  # exhausted


def test_max_delay_caps_the_wait() -> None:
    retriers = [retrier(interval_seconds=1, backoff_rate=10, max_delay_seconds=50, max_attempts=5)]
    delays = [plan_retry(retriers, "transient", {0: n}) for n in range(4)]
    assert [d.delay_seconds for d in delays if d] == [1.0, 10.0, 50.0, 50.0]


def test_huge_exponents_do_not_overflow() -> None:
    r = retrier(interval_seconds=1, backoff_rate=1000, max_attempts=1000)
    assert backoff_delay(r, 999) == DELAY_CEILING_SECONDS


def test_full_jitter_draws_uniformly_below_the_delay_and_is_reproducible() -> None:
    retriers = [retrier(interval_seconds=2, backoff_rate=2, jitter="full", max_attempts=10)]
    first = [plan_retry(retriers, "transient", [n], random.Random(7)) for n in range(6)]
    again = [plan_retry(retriers, "transient", [n], random.Random(7)) for n in range(6)]
    assert first == again
    for n, decision in enumerate(first):
        assert decision is not None
        assert decision.base_delay_seconds == 2 * 2**n
        assert 0 <= decision.delay_seconds <= decision.base_delay_seconds
    expected = random.Random(7).uniform(0, 8.0)
    assert first[2] is not None and first[2].delay_seconds == expected


def test_jitter_spreads_delays() -> None:
    retriers = [retrier(interval_seconds=100, jitter="full")]
    rng = random.Random(1)
    draws = {round(d.delay_seconds, 6) for d in (plan_retry(retriers, "transient", [0], rng) for _ in range(50)) if d}
    assert len(draws) > 40 and max(draws) < 100


def test_each_retrier_counts_its_own_attempts() -> None:
    retriers = [
        retrier(error_equals=["transient"], max_attempts=2, interval_seconds=1),
        retrier(error_equals=["timeout"], max_attempts=5, interval_seconds=10, backoff_rate=1),
    ]
    counts = [2, 1]  # transient exhausted, timeout has retried once
    assert plan_retry(retriers, "transient", counts) is None
    timeout = plan_retry(retriers, ErrorClass.TIMEOUT, counts)
    assert timeout is not None and (timeout.retrier_index, timeout.attempt, timeout.delay_seconds) == (
        1,
        2,
        10.0,
    )


def test_first_matching_retrier_applies_even_when_exhausted() -> None:
    # Step Functions does not fall through to a later retrier once the matching one is exhausted.
    retriers = [
        retrier(error_equals=["transient"], max_attempts=1),
        retrier(error_equals=["all"], max_attempts=9),
    ]
    assert plan_retry(retriers, "transient", [1, 0]) is None
    other = plan_retry(retriers, "auth", [1, 0])
    assert other is not None and other.retrier_index == 1


def test_max_attempts_zero_never_retries() -> None:
    retriers = [retrier(error_equals=["transient"], max_attempts=0), retrier(error_equals=["all"])]
    assert plan_retry(retriers, "transient", []) is None


def test_no_matching_retrier_means_no_retry() -> None:
    assert plan_retry([retrier()], "permanent", []) is None
    assert plan_retry([], "transient", []) is None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"error_equals": []}, "at least 1 item"),
        ({"error_equals": ["transient", "all"]}, "'all' must appear alone"),
        ({"error_equals": ["transient", "transient"]}, "listed more than once"),
        ({"error_equals": ["flaky"]}, "Input should be"),
        ({"error_equals": ["transient"], "backoff_rate": 0.9}, "greater than or equal to 1"),
        ({"error_equals": ["transient"], "max_attempts": -1}, "greater than or equal to 0"),
        ({"error_equals": ["transient"], "interval_seconds": 0}, "greater than 0"),
        ({"error_equals": ["transient"], "jitter": "partial"}, "Input should be"),
        ({"error_equals": ["transient"], "max_attempts": 2.5}, "valid integer"),
    ],
)
def test_invalid_retriers_are_refused(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Retrier.model_validate(data)


def test_catchers_match_in_declaration_order() -> None:
    catchers = [
        Catcher(error_equals=["business_rule"], next="review"),
        Catcher(error_equals=["transient", "timeout"], next="later"),
        Catcher(error_equals=["all"], next="fallback", result_path="errors.crm"),
    ]
    picks = {e: c.next for e in ErrorClass if (c := match_catcher(catchers, e))}
    assert picks == {
        "business_rule": "review",
        "transient": "later",
        "timeout": "later",
        "permanent": "fallback",
        "auth": "fallback",
        "unknown_outcome": "fallback",
        "refused": "fallback",
    }
    assert match_catcher(catchers[:2], "auth") is None


def test_catcher_error_path_defaults_to_errors_step_id() -> None:
    assert Catcher(error_equals=["all"], next="x").error_path("lookup") == "errors.lookup"
    assert Catcher(error_equals=["all"], next="x", result_path="steps.lookup.error").error_path("lookup") == (
        "steps.lookup.error"
    )


def test_fallback_result_is_present_only_when_given() -> None:
    assert not Catcher(error_equals=["all"], next="x").has_fallback_result
    assert Catcher.model_validate({"error_equals": ["all"], "next": "x", "fallback_result": None}).has_fallback_result
