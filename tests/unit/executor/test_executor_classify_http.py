"""The generic HTTP classifier: status codes, Retry-After, and network failures before/after sending."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from keel_contracts.errors import ErrorClass
from keel_executor.classify_http import (
    MAX_RETRY_AFTER_SECONDS,
    classify_status,
    classify_transport_error,
    error_code,
    parse_retry_after,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ErrorClass.PERMANENT),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (404, ErrorClass.PERMANENT),
        (405, ErrorClass.PERMANENT),
        (408, ErrorClass.TRANSIENT),
        (409, ErrorClass.BUSINESS_RULE),
        (410, ErrorClass.PERMANENT),
        (413, ErrorClass.PERMANENT),
        (422, ErrorClass.PERMANENT),
        (423, ErrorClass.BUSINESS_RULE),
        (429, ErrorClass.TRANSIENT),
        (500, ErrorClass.TRANSIENT),
        (501, ErrorClass.TRANSIENT),
        (502, ErrorClass.TRANSIENT),
        (503, ErrorClass.TRANSIENT),
        (504, ErrorClass.TRANSIENT),
        (599, ErrorClass.TRANSIENT),
        (301, ErrorClass.PERMANENT),
        (304, ErrorClass.PERMANENT),
    ],
)
def test_status_codes_map_to_their_error_class(status: int, expected: ErrorClass) -> None:
    error = classify_status(status)
    assert error is not None
    assert error.error_class is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, ErrorClass.UNKNOWN_OUTCOME),  # may have come after the commit: only a read-back can tell
        (502, ErrorClass.TRANSIENT),  # the gateway did not get an answer: not processed
        (503, ErrorClass.TRANSIENT),
        (504, ErrorClass.TRANSIENT),
        (409, ErrorClass.BUSINESS_RULE),
        (429, ErrorClass.TRANSIENT),
    ],
)
def test_on_a_write_only_a_500_leaves_the_outcome_unknown(status: int, expected: ErrorClass) -> None:
    error = classify_status(status, write=True)
    assert error is not None
    assert error.error_class is expected


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify_status(status) is None


def test_a_422_whose_error_code_the_tool_lists_is_a_business_rule() -> None:
    body = {"error": {"code": "record_locked", "message": "legal hold"}}
    assert classify_status(422, body=body).error_class is ErrorClass.PERMANENT  # type: ignore[union-attr]
    listed = classify_status(422, body=body, business_rule_codes={"record_locked"})
    assert listed is not None and listed.error_class is ErrorClass.BUSINESS_RULE


def test_the_message_names_the_request_status_code_and_server_message() -> None:
    error = classify_status(
        409, body={"error": {"code": "illegal_transition", "message": "closed -> open"}}, what="POST /t/1"
    )
    assert str(error) == "POST /t/1 answered 409 illegal_transition: closed -> open"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": {"code": "a"}}, "a"),
        ({"error": "b"}, "b"),
        ({"code": "c"}, "c"),
        ({"error": {"message": "no code"}}, None),
        ("text", None),
        (None, None),
    ],
)
def test_error_code_reads_the_common_shapes(body: object, code: str | None) -> None:
    assert error_code(body) == code


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_429_and_503_is_kept_on_the_error(status: int) -> None:
    error = classify_status(status, headers={"Retry-After": "7"})
    assert error is not None and error.retry_after == 7.0


def test_retry_after_on_other_statuses_is_ignored() -> None:
    error = classify_status(500, headers={"Retry-After": "7"})
    assert error is not None and error.retry_after is None


def test_retry_after_header_names_are_case_insensitive() -> None:
    error = classify_status(429, headers=httpx.Headers({"retry-after": "3"}))
    assert error is not None and error.retry_after == 3.0
    error = classify_status(429, headers={"RETRY-AFTER": "4"})
    assert error is not None and error.retry_after == 4.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("5", 5.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # a date in the past: no wait
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # RFC 850, still allowed by HTTP
        ("-3", 0.0),
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_is_parsed_from_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def _exc(kind: type[httpx.TransportError]) -> httpx.TransportError:
    return kind("boom", request=httpx.Request("POST", "http://x"))


@pytest.mark.parametrize(
    ("kind", "write", "expected"),
    [
        (httpx.ConnectError, True, ErrorClass.TRANSIENT),
        (httpx.ConnectTimeout, True, ErrorClass.TRANSIENT),
        (httpx.PoolTimeout, True, ErrorClass.TRANSIENT),
        (httpx.WriteError, True, ErrorClass.TRANSIENT),
        (httpx.WriteTimeout, True, ErrorClass.TRANSIENT),
        (httpx.ReadTimeout, True, ErrorClass.UNKNOWN_OUTCOME),
        (httpx.ReadError, True, ErrorClass.UNKNOWN_OUTCOME),
        (httpx.RemoteProtocolError, True, ErrorClass.UNKNOWN_OUTCOME),
        (httpx.ReadTimeout, False, ErrorClass.TRANSIENT),
        (httpx.ReadError, False, ErrorClass.TRANSIENT),
        (httpx.RemoteProtocolError, False, ErrorClass.TRANSIENT),
        (httpx.ConnectError, False, ErrorClass.TRANSIENT),
    ],
)
def test_without_trace_information_the_exception_kind_says_whether_the_request_was_sent(
    kind: type[httpx.TransportError], write: bool, expected: ErrorClass
) -> None:
    error = classify_transport_error(_exc(kind), write=write, request_sent=None, what="POST /x")
    assert error.error_class is expected


@pytest.mark.parametrize(
    ("sent", "write", "expected"),
    [
        (True, True, ErrorClass.UNKNOWN_OUTCOME),
        (False, True, ErrorClass.TRANSIENT),
        (True, False, ErrorClass.TRANSIENT),
        (False, False, ErrorClass.TRANSIENT),
    ],
)
def test_with_trace_information_only_a_sent_write_has_an_unknown_outcome(
    sent: bool, write: bool, expected: ErrorClass
) -> None:
    # A reset while still sending the body could not have been acted on; a read timeout after it may.
    for kind in (httpx.ReadTimeout, httpx.WriteError, httpx.RemoteProtocolError):
        error = classify_transport_error(_exc(kind), write=write, request_sent=sent, what="POST /x")
        assert error.error_class is expected, kind


def test_an_unknown_outcome_says_the_write_may_have_been_applied() -> None:
    error = classify_transport_error(_exc(httpx.ReadTimeout), write=True, request_sent=True, what="POST /refunds")
    assert "POST /refunds was sent" in str(error) and "may have been applied" in str(error)
