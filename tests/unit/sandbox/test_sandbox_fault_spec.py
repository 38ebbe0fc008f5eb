from __future__ import annotations

import pytest

from keel_sandbox.faults import (
    DEFAULT_HANG_MS,
    DEFAULT_RETRY_AFTER_S,
    FaultBoard,
    FaultKind,
    FaultSpec,
    FaultSpecError,
    parse_fault_spec,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("503", FaultSpec(kind=FaultKind.UNAVAILABLE)),
        ("500", FaultSpec(kind=FaultKind.INTERNAL_ERROR)),
        ("502", FaultSpec(kind=FaultKind.BAD_GATEWAY)),
        ("429", FaultSpec(kind=FaultKind.TOO_MANY_REQUESTS, retry_after_s=DEFAULT_RETRY_AFTER_S)),
        ("429:7", FaultSpec(kind=FaultKind.TOO_MANY_REQUESTS, retry_after_s=7)),
        ("drop", FaultSpec(kind=FaultKind.DROP)),
        ("DROP", FaultSpec(kind=FaultKind.DROP)),
        ("commit_then_timeout", FaultSpec(kind=FaultKind.COMMIT_THEN_TIMEOUT, hang_ms=DEFAULT_HANG_MS)),
        ("commit_then_timeout:1500", FaultSpec(kind=FaultKind.COMMIT_THEN_TIMEOUT, hang_ms=1500)),
        ("commit_then_500", FaultSpec(kind=FaultKind.COMMIT_THEN_500)),
        ("latency:250", FaultSpec(latency_ms=250)),
        (" latency:250 , 503 ", FaultSpec(kind=FaultKind.UNAVAILABLE, latency_ms=250)),
        ("429:2,latency:10", FaultSpec(kind=FaultKind.TOO_MANY_REQUESTS, retry_after_s=2, latency_ms=10)),
    ],
)
def test_valid_spec_parses_to_its_fault(text: str, expected: FaultSpec) -> None:
    assert parse_fault_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        (" , ", "empty"),
        ("504", "unknown fault"),
        ("latency", "needs milliseconds"),
        ("latency:fast", "must be an integer"),
        ("latency:-1", "between"),
        ("latency:1,latency:2", "twice"),
        ("503,429", "only one fault"),
        ("drop:5", "takes no argument"),
        ("429:soon", "must be an integer"),
    ],
)
def test_invalid_spec_is_refused_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(FaultSpecError, match=complaint):
        parse_fault_spec(text)


def test_described_spec_parses_back_to_itself() -> None:
    for text in ("latency:40,429:3", "commit_then_timeout:900", "drop", "latency:5"):
        spec = parse_fault_spec(text)
        assert parse_fault_spec(spec.describe()) == spec


def test_armed_fault_counts_down_and_then_stops_firing() -> None:
    board = FaultBoard()
    armed = board.arm(parse_fault_spec("503"), method="POST", path_prefix="/billing", count=2)

    fired = [board.take("POST", "/billing/refunds") for _ in range(3)]

    assert fired == [FaultSpec(kind=FaultKind.UNAVAILABLE)] * 2 + [None]
    assert (armed.remaining, armed.fired, board.fired_total) == (0, 2, 2)


def test_armed_fault_matches_only_its_method_and_path_prefix() -> None:
    board = FaultBoard()
    board.arm(parse_fault_spec("drop"), method="post", path_prefix="/tickets", count=None)

    assert board.take("GET", "/tickets") is None
    assert board.take("POST", "/crm/contacts") is None
    assert board.take("POST", "/tickets/OPS-1/comments") == FaultSpec(kind=FaultKind.DROP)


def test_first_matching_armed_fault_fires_before_later_ones() -> None:
    board = FaultBoard()
    board.arm(parse_fault_spec("429"), count=1)
    board.arm(parse_fault_spec("500"), count=1)

    kinds = [spec.kind if spec else None for spec in (board.take("GET", "/x") for _ in range(3))]

    assert kinds == [FaultKind.TOO_MANY_REQUESTS, FaultKind.INTERNAL_ERROR, None]


def test_probabilistic_fault_is_reproducible_with_a_seed() -> None:
    def firing_pattern(seed: int) -> list[bool]:
        board = FaultBoard()
        board.arm(parse_fault_spec("503"), count=None, probability=0.3, seed=seed)
        return [board.take("GET", "/tickets") is not None for _ in range(200)]

    pattern = firing_pattern(11)

    assert pattern == firing_pattern(11)
    assert pattern != firing_pattern(12)
    assert 30 <= sum(pattern) <= 90


def test_disarmed_fault_no_longer_fires() -> None:
    board = FaultBoard()
    armed = board.arm(parse_fault_spec("503"), count=None)

    assert board.disarm(armed.id) is True
    assert board.disarm(armed.id) is False
    assert board.take("GET", "/tickets") is None


@pytest.mark.parametrize(
    "kwargs",
    [{"count": 0}, {"probability": 0.0}, {"probability": 1.5}, {"path_prefix": "tickets"}],
)
def test_arming_with_nonsense_limits_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(FaultSpecError):
        FaultBoard().arm(parse_fault_spec("503"), **kwargs)  # type: ignore[arg-type]
