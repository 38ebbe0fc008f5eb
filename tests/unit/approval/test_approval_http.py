"""The HTTP API and the web inbox, in process: authentication, authorisation, CSRF, escaping."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from approval_testkit import REFUND, Outbox, request
from fastapi.testclient import TestClient

from keel_approval import openapi
from keel_approval.approvers import ApproverDirectory
from keel_approval.service import ApprovalService
from keel_approval.webapp import create_app
from keel_contracts.approvals import ApprovalGranted, payload_hash

ROOT = Path(__file__).resolve().parents[3]
HASH = payload_hash(REFUND)


@pytest.fixture
def tokens(directory: ApproverDirectory) -> dict[str, str]:
    return {
        "fiona": directory.add("fiona", ["finance"]),
        "sam": directory.add("sam", ["security"]),
        "bot": directory.add("refund-bot", ["finance"]),
    }


@pytest.fixture
def client(service: ApprovalService, tokens: dict[str, str]) -> Iterator[TestClient]:
    asyncio.run(service.on_requested(request("appr/1:x"), seq=1))
    with TestClient(create_app(service)) as http:
        yield http


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def path(approval_id: str = "appr/1:x") -> str:
    return "/api/v1/approvals/" + quote(approval_id, safe="")


def test_every_api_route_needs_a_valid_token(client: TestClient) -> None:
    for method, url in [("GET", "/api/v1/me"), ("GET", "/api/v1/approvals"), ("GET", path())]:
        assert client.request(method, url).status_code == 401
        assert client.request(method, url, headers=auth("kat_not-a-token")).status_code == 401
    assert client.post(path() + "/approve", json={"payload_hash": HASH}).status_code == 401


def test_an_approver_sees_the_requests_for_their_roles_only(client: TestClient, tokens: dict[str, str]) -> None:
    me = client.get("/api/v1/me", headers=auth(tokens["fiona"])).json()
    assert me == {"name": "fiona", "roles": ["finance"]}
    mine = client.get("/api/v1/approvals", headers=auth(tokens["fiona"])).json()
    assert [a["approval_id"] for a in mine["approvals"]] == ["appr/1:x"]
    assert client.get("/api/v1/approvals", headers=auth(tokens["sam"])).json()["approvals"] == []
    refused = client.get(path(), headers=auth(tokens["sam"]))
    assert refused.status_code == 403 and refused.json()["error"] == "role_mismatch"


def test_the_detail_shows_payload_target_evidence_and_who_asked(client: TestClient, tokens: dict[str, str]) -> None:
    doc = client.get(path(), headers=auth(tokens["fiona"])).json()
    assert doc["payload"] == REFUND and doc["payload_hash"] == HASH
    assert doc["target"]["system"] == "billing" and doc["target"]["link"].startswith("https://")
    assert doc["evidence"] == {"ticket": "T-9", "charges": 2}
    assert doc["requested_by"] == "agent:refund-bot" and doc["run_id"] == "r1"
    assert doc["approves_step"] == "issue_refund" and doc["expires_at"].startswith("2030-01-01T13:00")
    assert [h["what"] for h in doc["history"]] == ["requested"]


def test_a_finance_approval_is_granted_once(client: TestClient, tokens: dict[str, str], outbox: Outbox) -> None:
    ok = client.post(path() + "/approve", json={"payload_hash": HASH}, headers=auth(tokens["fiona"]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["event"] == "approval_granted" and ok.json()["published"] is True
    [event] = outbox.published
    assert isinstance(event, ApprovalGranted) and event.body.payload_hash == HASH
    again = client.post(path() + "/approve", json={"payload_hash": HASH}, headers=auth(tokens["fiona"]))
    assert again.status_code == 409 and again.json()["error"] == "already_decided"
    assert len(outbox.published) == 1


def test_security_and_the_requester_are_refused(client: TestClient, tokens: dict[str, str], outbox: Outbox) -> None:
    sam = client.post(path() + "/approve", json={"payload_hash": HASH}, headers=auth(tokens["sam"]))
    assert sam.status_code == 403 and sam.json()["error"] == "role_mismatch"
    bot = client.post(path() + "/approve", json={"payload_hash": HASH}, headers=auth(tokens["bot"]))
    assert bot.status_code == 403 and bot.json()["error"] == "requester_cannot_decide"
    assert outbox.published == []


def test_a_denial_without_a_reason_and_a_wrong_hash_are_refused(
    client: TestClient, tokens: dict[str, str], outbox: Outbox
) -> None:
    no_reason = client.post(path() + "/deny", json={"payload_hash": HASH, "reason": ""}, headers=auth(tokens["fiona"]))
    assert no_reason.status_code == 422 and no_reason.json()["error"] == "reason_required"
    wrong = client.post(path() + "/approve", json={"payload_hash": "sha256:00"}, headers=auth(tokens["fiona"]))
    assert wrong.status_code == 409 and wrong.json()["error"] == "payload_changed"
    denied = client.post(
        path() + "/deny", json={"payload_hash": HASH, "reason": "duplicate"}, headers=auth(tokens["fiona"])
    )
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    assert outbox.types() == ["approval_denied"]


def _login(client: TestClient, token: str) -> str:
    page = client.get("/inbox/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    done = client.post("/inbox/login", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False)
    assert done.status_code == 303, done.text
    inbox = client.get("/inbox")
    found = re.search(r'name="csrf" value="([^"]+)"', inbox.text)
    assert found is not None
    return found.group(1)


def test_the_inbox_needs_a_login_and_the_login_needs_its_csrf_token(client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/inbox", follow_redirects=False).headers["location"] == "/inbox/login"
    client.get("/inbox/login")
    forged = client.post("/inbox/login", data={"token": tokens["fiona"], "csrf": "guess"}, follow_redirects=False)
    assert forged.status_code == 200 and "expired" in forged.text
    assert client.get("/inbox", follow_redirects=False).status_code == 303


def test_the_inbox_approves_with_csrf_and_refuses_without(
    client: TestClient, tokens: dict[str, str], outbox: Outbox
) -> None:
    csrf = _login(client, tokens["fiona"])
    page = client.get("/inbox")
    assert "Refund 42.00 EUR" in page.text and page.headers["content-security-policy"].startswith("default-src 'none'")
    url = "/inbox/approvals/" + quote("appr/1:x", safe="")
    detail = client.get(url)
    assert detail.status_code == 200 and HASH in detail.text
    form = {"action": "approve", "payload_hash": HASH, "reason": "fine"}
    forged = client.post(url + "/decide", data={**form, "csrf": "x" * 64})
    assert forged.status_code == 403 and outbox.published == []
    done = client.post(url + "/decide", data={**form, "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    after = client.get(done.headers["location"])
    assert "Approved" in after.text and 'id="status">approved' in after.text
    assert outbox.types() == ["approval_granted"]
    history = client.get("/inbox/history")
    assert "appr" in history.text and "approved" in history.text


def test_the_inbox_shows_the_requesters_refusal(client: TestClient, tokens: dict[str, str]) -> None:
    csrf = _login(client, tokens["bot"])
    url = "/inbox/approvals/" + quote("appr/1:x", safe="")
    refused = client.post(url + "/decide", data={"action": "approve", "payload_hash": HASH, "csrf": csrf})
    assert refused.status_code == 403 and "cannot decide" in refused.text


def test_payloads_reasons_and_links_are_escaped(
    service: ApprovalService, client: TestClient, tokens: dict[str, str]
) -> None:
    evil = request(
        "evil",
        run_id="r9",
        payload={"note": "<script>alert(1)</script>"},
        before={"note": "<img src=x onerror=alert(2)>"},
        summary="<b>bold</b> summary",
        reason="<i>why</i>",
    )
    evil = evil.model_copy(
        update={
            "body": evil.body.model_copy(
                update={"target": evil.body.target.model_copy(update={"link": "javascript:alert(3)"})}
            )
        }
    )
    asyncio.run(service.on_requested(evil, seq=2))
    _login(client, tokens["fiona"])
    page = client.get("/inbox/approvals/evil").text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img" not in page and "<b>bold" not in page and "<i>why" not in page
    assert 'href="javascript:' not in page and "not a web link" in page


def test_logout_ends_the_session(client: TestClient, tokens: dict[str, str]) -> None:
    csrf = _login(client, tokens["fiona"])
    client.post("/inbox/logout", data={"csrf": csrf})
    assert client.get("/inbox", follow_redirects=False).status_code == 303


def test_the_checked_in_openapi_document_is_current() -> None:
    checked_in = ROOT / "docs" / "approval-openapi.json"
    assert checked_in.read_text() == openapi.render(), (
        "docs/approval-openapi.json is stale: run `python -m keel_approval.openapi > docs/approval-openapi.json`"
    )
    doc = json.loads(checked_in.read_text())
    assert {"/api/v1/me", "/api/v1/approvals"} <= doc["paths"].keys()
    assert not any(p.startswith("/inbox") for p in doc["paths"])
