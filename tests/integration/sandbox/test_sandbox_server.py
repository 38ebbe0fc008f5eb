"""The sandbox as a real server process, over TCP, with its database counted directly."""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from keel_sandbox.testing import SandboxProcess, start_sandbox

pytestmark = pytest.mark.integration

REFUND = {"charge_id": 2, "amount_cents": 2500, "reason": "duplicate"}


def test_429_fault_over_http_carries_retry_after(sandbox: SandboxProcess) -> None:
    response = httpx.post(
        f"{sandbox.base_url}/billing/refunds", json=REFUND, headers={"X-Sandbox-Fault": "429:4"}, timeout=5
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"
    assert sandbox.count("write_log") == 0


def test_drop_fault_closes_the_connection_without_any_response(sandbox: SandboxProcess) -> None:
    with pytest.raises(httpx.TransportError) as raised:
        httpx.post(
            f"{sandbox.base_url}/billing/refunds",
            json=REFUND,
            headers={"X-Sandbox-Fault": "drop", "Idempotency-Key": "dropped"},
            timeout=5,
        )

    assert not isinstance(raised.value, httpx.TimeoutException)
    assert sandbox.count("write_log") == 0
    assert httpx.get(f"{sandbox.base_url}/healthz", timeout=5).status_code == 200


def test_drop_fault_sends_not_a_single_byte(sandbox: SandboxProcess) -> None:
    address = urlsplit(sandbox.base_url)
    assert address.hostname is not None and address.port is not None
    request = b"GET /tickets HTTP/1.1\r\nHost: sandbox\r\nX-Sandbox-Fault: drop\r\nConnection: keep-alive\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(request)
        received = connection.recv(65536)

    assert received == b""


def test_commit_then_timeout_times_out_the_client_while_the_write_is_committed(
    sandbox: SandboxProcess,
) -> None:
    url = f"{sandbox.base_url}/billing/refunds"
    headers = {"Idempotency-Key": "unknown-outcome", "X-Keel-Run-Id": "run-1"}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=REFUND, headers={**headers, "X-Sandbox-Fault": "commit_then_timeout"}, timeout=1.0)

    assert sandbox.count("billing_refunds", idempotency_key="unknown-outcome", run_id="run-1") == 1
    assert sandbox.count("write_log", idempotency_key="unknown-outcome") == 1

    retried = httpx.post(url, json=REFUND, headers=headers, timeout=5)

    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert sandbox.count("billing_refunds", idempotency_key="unknown-outcome") == 1
    assert httpx.get(f"{sandbox.base_url}/billing/charges/2", timeout=5).json()["refunded_cents"] == 2500


def test_armed_faults_over_http_count_down_then_let_requests_through(sandbox: SandboxProcess) -> None:
    with httpx.Client(base_url=sandbox.base_url, timeout=5) as client:
        client.post("/_faults", json={"fault": "503", "method": "POST", "path_prefix": "/tickets", "count": 2})
        ticket = {"project": "OPS", "summary": "printer on fire", "reporter": "agent"}
        statuses = [
            client.post("/tickets", json=ticket, headers={"Idempotency-Key": "t"}).status_code for _ in range(3)
        ]

        assert statuses == [503, 503, 201]
        assert client.get("/_stats").json()["faults_fired"] == 2
    assert sandbox.count("tickets") == 1


def test_concurrent_requests_with_one_key_write_exactly_once(sandbox: SandboxProcess) -> None:
    # The whole charge: a loser that re-ran the refund would be refused, not silently deduplicated.
    full_refund = {"charge_id": 2, "amount_cents": 129900}
    senders = 8
    start_together = threading.Barrier(senders)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=sandbox.base_url, timeout=30) as client:
            client.get("/healthz")  # connect first, so the writes leave as close together as possible
            start_together.wait()
            return client.post("/billing/refunds", json=full_refund, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(max_workers=senders) as pool:
        responses = list(pool.map(post, range(senders)))

    assert [r.status_code for r in responses] == [201] * senders, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert sandbox.count("billing_refunds", idempotency_key="race") == 1
    assert sandbox.count("write_log") == 1
    assert httpx.get(f"{sandbox.base_url}/billing/charges/2", timeout=5).json()["refunded_cents"] == 129900


def test_sigterm_stops_the_server_promptly_even_with_a_request_hanging(tmp_path: Path) -> None:
    sandbox = start_sandbox(f"sqlite:///{tmp_path / 'sandbox.db'}", tmp_path)
    outcome: list[BaseException | httpx.Response] = []

    def hang() -> None:
        try:
            outcome.append(
                httpx.get(
                    f"{sandbox.base_url}/tickets",
                    headers={"X-Sandbox-Fault": "commit_then_timeout"},
                    timeout=60,
                )
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    hanging = threading.Thread(target=hang)
    hanging.start()
    time.sleep(0.5)
    started = time.monotonic()

    returncode = sandbox.stop()

    hanging.join(timeout=10)
    # uvicorn re-raises the signal once its graceful shutdown is done; -SIGKILL would mean `stop` forced it.
    assert returncode == -signal.SIGTERM, sandbox.log()
    assert time.monotonic() - started < 10
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError)
