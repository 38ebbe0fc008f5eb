"""Fault injection driven in-process. Without a socket, a drop surfaces as `ConnectionDropped`; the real
connection drop over TCP is proven by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from keel_sandbox.fault_injection import ConnectionDropped

REFUND = {"charge_id": 2, "amount_cents": 500}


def fault(spec: str, key: str | None = None) -> dict[str, str]:
    headers = {"X-Sandbox-Fault": spec}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


@pytest.mark.parametrize(("spec", "status"), [("500", 500), ("502", 502), ("503", 503), ("429", 429)])
async def test_error_fault_answers_its_status_without_writing(
    client: httpx.AsyncClient, count_rows: Callable[..., int], spec: str, status: int
) -> None:
    response = await client.post("/billing/refunds", json=REFUND, headers=fault(spec, key="k"))

    assert response.status_code == status
    assert response.json()["error"]["code"] == "injected_fault"
    assert count_rows("write_log") == 0
    assert count_rows("idempotency_keys") == 0


async def test_429_fault_says_when_to_retry(client: httpx.AsyncClient) -> None:
    default = await client.get("/tickets", headers=fault("429"))
    explicit = await client.get("/tickets", headers=fault("429:9"))

    assert default.headers["retry-after"] == "1"
    assert explicit.headers["retry-after"] == "9"


async def test_5xx_fault_has_no_retry_after(client: httpx.AsyncClient) -> None:
    assert "retry-after" not in (await client.get("/tickets", headers=fault("503"))).headers


async def test_latency_fault_delays_then_serves_the_request(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.get("/billing/charges/2", headers=fault("latency:200"))

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200


async def test_drop_fault_gives_no_response_and_writes_nothing(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    with pytest.raises(ConnectionDropped):
        await client.post("/billing/refunds", json=REFUND, headers=fault("drop", key="dropped"))

    assert count_rows("write_log") == 0


async def test_commit_then_500_commits_the_write_and_a_keyed_retry_replays_it(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    failed = await client.post("/billing/refunds", json=REFUND, headers=fault("commit_then_500", key="c500"))
    retried = await client.post("/billing/refunds", json=REFUND, headers={"Idempotency-Key": "c500"})

    assert failed.status_code == 500
    assert failed.json()["error"]["details"]["real_status"] == 201
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert count_rows("billing_refunds", idempotency_key="c500") == 1
    assert (await client.get("/billing/charges/2")).json()["refunded_cents"] == 500


async def test_commit_then_timeout_commits_the_write_then_answers_nothing(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    with pytest.raises(ConnectionDropped):
        await client.post("/billing/refunds", json=REFUND, headers=fault("commit_then_timeout:50", key="cto"))

    assert count_rows("billing_refunds", idempotency_key="cto") == 1
    assert (await client.get("/_idempotency/cto")).json()["status_code"] == 201


async def test_invalid_fault_header_is_refused_with_400_and_not_processed(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    response = await client.post("/billing/refunds", json=REFUND, headers=fault("teapot"))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_fault_spec"
    assert count_rows("write_log") == 0


async def test_armed_fault_fires_count_times_on_matching_requests_only(client: httpx.AsyncClient) -> None:
    armed = await client.post(
        "/_faults", json={"fault": "503", "method": "POST", "path_prefix": "/billing/refunds", "count": 2}
    )
    assert armed.status_code == 201

    unmatched = await client.get("/billing/refunds")
    statuses = [(await client.post("/billing/refunds", json=REFUND)).status_code for _ in range(3)]
    board = (await client.get("/_faults")).json()

    assert unmatched.status_code == 200
    assert statuses == [503, 503, 201]
    assert board["faults"][0]["remaining"] == 0
    assert board["faults"][0]["fired"] == 2


async def test_armed_fault_with_latency_field_delays_the_request(client: httpx.AsyncClient) -> None:
    await client.post("/_faults", json={"fault": "429:3", "latency_ms": 150, "path_prefix": "/crm"})

    started = time.monotonic()
    response = await client.get("/crm/contacts/1")

    assert time.monotonic() - started >= 0.15
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"


async def test_header_fault_takes_precedence_and_leaves_armed_faults_untouched(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/_faults", json={"fault": "500", "count": 1})

    first = await client.get("/tickets", headers=fault("latency:0"))
    second = await client.get("/tickets")

    assert (first.status_code, second.status_code) == (200, 500)


async def test_control_endpoints_are_exempt_from_armed_faults(client: httpx.AsyncClient) -> None:
    await client.post("/_faults", json={"fault": "503", "count": None})

    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/_stats")).status_code == 200
    assert (await client.delete("/_faults")).json() == {"disarmed": 1}
    assert (await client.get("/tickets")).status_code == 200


async def test_arming_an_invalid_spec_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/_faults", json={"fault": "latency:soon"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_fault_spec"
    assert (await client.get("/_faults")).json()["faults"] == []


async def test_single_armed_fault_can_be_disarmed(client: httpx.AsyncClient) -> None:
    armed = (await client.post("/_faults", json={"fault": "503", "count": None})).json()

    assert (await client.delete(f"/_faults/{armed['id']}")).status_code == 204
    assert (await client.delete(f"/_faults/{armed['id']}")).status_code == 404
    assert (await client.get("/tickets")).status_code == 200
