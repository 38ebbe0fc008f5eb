"""Guessing approver tokens is throttled per client: 429 with Retry-After, counted, and nobody else is
locked out (keel_approval.throttle)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from approval_testkit import request
from fastapi.testclient import TestClient

from keel_approval.approvers import ApproverDirectory
from keel_approval.metrics import THROTTLED
from keel_approval.service import ApprovalService
from keel_approval.throttle import MAX_CLIENTS, GuessThrottle
from keel_approval.webapp import create_app


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def app(service: ApprovalService, ticks: Ticks):  # type: ignore[no-untyped-def]
    asyncio.run(service.on_requested(request("appr-1"), seq=1))
    return create_app(service, throttle=GuessThrottle(max_failures=5, window_seconds=60, clock=ticks))


@pytest.fixture
def fiona(directory: ApproverDirectory) -> str:
    return directory.add("fiona", ["finance"])


@pytest.fixture
def guesser(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, client=("203.0.113.9", 40000)) as http:
        yield http


def me(http: TestClient, token: str) -> int:
    return http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_client_that_keeps_guessing_gets_429_with_retry_after_and_is_counted(guesser: TestClient) -> None:
    assert [me(guesser, f"kat_guess-{n}") for n in range(5)] == [401] * 5
    before = THROTTLED._value.get()

    blocked = guesser.get("/api/v1/me", headers={"Authorization": "Bearer kat_guess-6"})

    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert THROTTLED._value.get() == before + 1


def test_while_throttled_even_a_valid_token_is_not_checked(guesser: TestClient, fiona: str) -> None:
    for n in range(5):
        me(guesser, f"kat_guess-{n}")
    # Otherwise a 200 among the 429s would tell the guesser which token is right.
    assert me(guesser, fiona) == 429


def test_an_approver_elsewhere_is_not_locked_out_by_someone_elses_guessing(
    app, guesser: TestClient, fiona: str
) -> None:  # type: ignore[no-untyped-def]
    for n in range(6):
        me(guesser, f"kat_guess-{n}")
    with TestClient(app, client=("198.51.100.4", 40001)) as office:
        assert me(office, fiona) == 200


def test_the_throttle_lifts_once_the_window_has_passed(guesser: TestClient, fiona: str, ticks: Ticks) -> None:
    for n in range(5):
        me(guesser, f"kat_guess-{n}")
    assert me(guesser, fiona) == 429
    ticks.now += 61
    assert me(guesser, fiona) == 200


def test_a_correct_token_clears_the_clients_count(guesser: TestClient, fiona: str) -> None:
    for n in range(4):
        me(guesser, f"kat_typo-{n}")
    assert me(guesser, fiona) == 200
    assert [me(guesser, f"kat_typo-{n}") for n in range(4)] == [401] * 4


def test_the_inbox_login_is_throttled_too(guesser: TestClient, fiona: str) -> None:
    for n in range(5):
        guesser.get("/inbox/login")
        csrf = guesser.cookies.get("keel_approval_login_csrf")
        assert guesser.post("/inbox/login", data={"token": f"kat_guess-{n}", "csrf": csrf}).status_code == 200
    guesser.get("/inbox/login")
    csrf = guesser.cookies.get("keel_approval_login_csrf")
    page = guesser.post("/inbox/login", data={"token": fiona, "csrf": csrf}, follow_redirects=False)
    assert page.status_code == 429 and "Too many wrong tokens" in page.text and page.headers["retry-after"]


def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    guard = GuessThrottle(max_failures=1, window_seconds=60, clock=lambda: 0.0)
    for n in range(MAX_CLIENTS + 5):
        guard.failed(f"client-{n}")
    assert len(guard._failures) == MAX_CLIENTS
    assert guard.retry_after("client-0") is None  # forgotten first
    assert guard.retry_after(f"client-{MAX_CLIENTS + 4}") is not None
