from __future__ import annotations

from collections.abc import Callable

import httpx

REFUND = {"charge_id": 1, "amount_cents": 1000, "reason": "duplicate"}


def keyed(key: str, **extra: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **extra}


async def test_replay_with_same_key_and_body_returns_original_response_and_writes_once(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    first = await client.post("/billing/refunds", json=REFUND, headers=keyed("refund-1"))
    second = await client.post("/billing/refunds", json=REFUND, headers=keyed("refund-1"))

    assert first.status_code == 201
    assert second.status_code == 201
    assert second.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert count_rows("billing_refunds", idempotency_key="refund-1") == 1
    assert count_rows("write_log", idempotency_key="refund-1") == 1
    charge = (await client.get("/billing/charges/1")).json()
    assert charge["refunded_cents"] == 1000


async def test_replay_of_a_keyed_write_still_answers_after_later_writes_changed_the_record(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/tickets", json={"project": "OPS", "summary": "disk full", "reporter": "ops"}, headers=keyed("t-1")
    )
    key = created.json()["key"]
    await client.post(f"/tickets/{key}/transitions", json={"to": "in_progress"})

    replayed = await client.post(
        "/tickets", json={"project": "OPS", "summary": "disk full", "reporter": "ops"}, headers=keyed("t-1")
    )

    assert replayed.json() == created.json()
    assert replayed.json()["status"] == "open"


async def test_same_key_with_different_body_is_refused_with_422_and_writes_nothing(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    await client.post("/billing/refunds", json=REFUND, headers=keyed("refund-2"))

    mismatched = await client.post("/billing/refunds", json={**REFUND, "amount_cents": 2000}, headers=keyed("refund-2"))

    assert mismatched.status_code == 422
    assert mismatched.json()["error"]["code"] == "idempotency_key_reused"
    assert count_rows("billing_refunds") == 1
    assert count_rows("write_log") == 1


async def test_same_key_on_a_different_endpoint_is_refused_with_422(client: httpx.AsyncClient) -> None:
    await client.post("/billing/refunds", json=REFUND, headers=keyed("shared-key"))

    other = await client.post(
        "/crm/contacts/1/notes", json={"author": "agent", "body": "called back"}, headers=keyed("shared-key")
    )

    assert other.status_code == 422
    assert other.json()["error"]["details"]["original_operation"] == "billing.refund.create"


async def test_writes_without_a_key_are_not_deduplicated(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    for _ in range(2):
        assert (await client.post("/billing/refunds", json=REFUND)).status_code == 201

    assert count_rows("billing_refunds", charge_id=1) == 2
    assert count_rows("write_log", operation="billing.refund.create") == 2


async def test_refused_write_stores_no_key_so_a_retry_is_evaluated_again(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    too_much = {"charge_id": 1, "amount_cents": 999_999}

    first = await client.post("/billing/refunds", json=too_much, headers=keyed("refund-3"))
    again = await client.post("/billing/refunds", json=too_much, headers=keyed("refund-3"))

    assert first.status_code == again.status_code == 409
    assert "idempotent-replayed" not in again.headers
    assert (await client.get("/_idempotency/refund-3")).status_code == 404
    assert count_rows("idempotency_keys") == 0


async def test_key_lookup_tells_whether_a_write_landed(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_idempotency/refund-4")).json()["error"]["code"] == "idempotency_key_not_found"
    created = await client.post("/billing/refunds", json=REFUND, headers=keyed("refund-4"))

    record = (await client.get("/_idempotency/refund-4")).json()
    by_key = (await client.get("/billing/refunds", params={"idempotency_key": "refund-4"})).json()["items"]

    assert record["operation"] == "billing.refund.create"
    assert record["status_code"] == 201
    assert record["response"] == created.json()
    assert record["write"]["table_name"] == "billing_refunds"
    assert [refund["id"] for refund in by_key] == [created.json()["id"]]


async def test_caller_correlation_headers_are_stored_with_the_write(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = keyed("note-1", **{"X-Keel-Run-Id": "run-7", "X-Keel-Step-Id": "step-3", "traceparent": traceparent})

    await client.post("/crm/contacts/1/notes", json={"author": "agent", "body": "hi"}, headers=headers)

    writes = (await client.get("/_writes", params={"run_id": "run-7"})).json()["items"]
    assert [(w["operation"], w["step_id"], w["traceparent"]) for w in writes] == [
        ("crm.note.create", "step-3", traceparent)
    ]
    assert count_rows("crm_notes", run_id="run-7", step_id="step-3", traceparent=traceparent) == 1


async def test_replays_are_counted_in_stats_and_in_the_database(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    for _ in range(3):
        await client.post("/billing/refunds", json=REFUND, headers=keyed("refund-5"))

    stats = (await client.get("/_stats")).json()

    assert stats["idempotent_replays"] == 2
    assert stats["writes_by_table"] == {"billing_refunds": 1}
    assert count_rows("idempotency_keys", key="refund-5", replay_count=2) == 1
