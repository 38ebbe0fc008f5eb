"""The approval service's size limits: a request whose payload is over KEEL_MAX_APPROVAL_PAYLOAD_BYTES is
denied at once with the reason (never shown as pending), and the HTTP API refuses an oversized body."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from approval_testkit import REFUND, Clock, Outbox, request
from fastapi.testclient import TestClient

from keel_approval.approvers import ApproverDirectory
from keel_approval.domain import SERVICE_IDENTITY, Approver, Invalid, Status
from keel_approval.service import ApprovalService
from keel_approval.store import ApprovalStore
from keel_approval.webapp import MAX_REQUEST_BODY_BYTES, create_app
from keel_contracts.approvals import ApprovalDenied, approval_payload_bytes, payload_hash

FIONA = Approver("fiona", frozenset({"finance"}))
BIG = {"note": "x" * 2000}


@pytest.fixture
def small_service(store: ApprovalStore, directory: ApproverDirectory, outbox: Outbox, clock: Clock) -> ApprovalService:
    return ApprovalService(store, directory, outbox.publish, outbox.schedule, clock, max_payload_bytes=1024)


async def test_a_request_over_the_payload_limit_is_denied_at_once_with_the_reason(
    small_service: ApprovalService, outbox: Outbox
) -> None:
    applied = await small_service.on_requested(request(payload=BIG), seq=1)

    assert applied.record.status is Status.DENIED and applied.record.decided_by == (SERVICE_IDENTITY,)
    [denied] = outbox.published
    assert isinstance(denied, ApprovalDenied) and denied.body.payload_hash == payload_hash(BIG)
    size = approval_payload_bytes(BIG)
    assert denied.body.reason.startswith(
        f"limit max_approval_payload_bytes exceeded: the payload to approve is {size} bytes, limit 1024"
    )
    assert outbox.scheduled == []  # no expiry to wait for
    assert await small_service.inbox(FIONA) == []

    again = await small_service.on_requested(request(payload=BIG), seq=1)  # a redelivery changes nothing
    assert again.record.status is Status.DENIED and len(outbox.published) == 1


async def test_a_request_within_the_limit_waits_for_an_approver(small_service: ApprovalService, outbox: Outbox) -> None:
    applied = await small_service.on_requested(request(payload=REFUND), seq=1)
    assert applied.record.status is Status.PENDING and outbox.published == []


async def test_a_reason_longer_than_a_decision_carries_is_refused_however_it_is_sent(
    service: ApprovalService,
) -> None:
    await service.on_requested(request(), seq=1)
    with pytest.raises(Invalid) as refused:
        await service.deny("appr-1", FIONA, payload_hash(REFUND), "r" * 5000)
    assert refused.value.code == "reason_too_long" and refused.value.http_status == 422


@pytest.fixture
def client(service: ApprovalService, directory: ApproverDirectory) -> Iterator[tuple[TestClient, str]]:
    token = directory.add("fiona", ["finance"])
    asyncio.run(service.on_requested(request("appr-1"), seq=1))
    with TestClient(create_app(service)) as http:
        yield http, token


def test_an_oversized_decision_body_is_refused_with_413_before_it_is_read(client: tuple[TestClient, str]) -> None:
    http, token = client
    url = "/api/v1/approvals/" + quote("appr-1", safe="") + "/approve"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    padding = " " * (MAX_REQUEST_BODY_BYTES + 1)
    body = '{"payload_hash": "' + payload_hash(REFUND) + '"' + padding + "}"

    declared = http.post(url, content=body.encode(), headers=headers)
    streamed = http.post(url, content=iter([body.encode()[:1000], body.encode()[1000:]]), headers=headers)

    for refused in (declared, streamed):
        assert refused.status_code == 413
        assert refused.json() == {
            "error": "too_large",
            "detail": f"the request body is over the limit of {MAX_REQUEST_BODY_BYTES} bytes",
        }
    fine = http.post(url, json={"payload_hash": payload_hash(REFUND)}, headers=headers)
    assert fine.status_code == 200 and fine.json()["status"] == "approved"


def test_a_reason_over_the_limit_is_named_as_such_by_the_api(client: tuple[TestClient, str]) -> None:
    http, token = client
    url = "/api/v1/approvals/" + quote("appr-1", safe="") + "/deny"
    body = {"payload_hash": payload_hash(REFUND), "reason": "r" * 5000}
    refused = http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 422 and refused.json()["error"] == "reason_too_long"
