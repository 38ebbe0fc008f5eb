"""The webhook ingress on real processes: a signed request starts (or joins) a run and is answered with
its id; unsigned, badly signed, stale and replayed requests get a clear 4xx and start nothing."""

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel_contracts.envelope import run_id_for
from keel_router.webhooks import sign
from tests.conftest import StackFactory, StackHandle
from tests.integration.router_kit import reaches

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-for-tests"
SLACK_SECRET = "slack-signing-secret"


def signed(
    body: dict[str, Any], *, scheme: str = "keel", secret: str = SECRET, at: float | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    ts = str(int(time.time() if at is None else at))
    signature = sign(scheme, secret.encode(), ts, raw)  # type: ignore[arg-type]
    if scheme == "slack":
        return raw, {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": ts}
    return raw, {"X-Keel-Signature": signature, "X-Keel-Timestamp": ts}


async def ingress_stack(keel_stack: StackFactory, tmp_path: Path) -> tuple[StackHandle, str]:
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"orders": {"intent_key": "body:order.id", "workflows": ["demo"]}}))
    stack = await keel_stack(
        services=("router", "executor", "ingress"),
        env={
            "KEEL_INGRESS_SOURCES_FILE": str(sources),
            "KEEL_WEBHOOK_SECRET_ORDERS": SECRET,
            "KEEL_WEBHOOK_SECRET_GENERIC": SECRET,
            "KEEL_WEBHOOK_SECRET_SLACK": SLACK_SECRET,
        },
    )
    return stack, f"http://127.0.0.1:{stack.stack.children['ingress'].spec.metrics_port}"


async def test_the_webhook_ingress_accepts_signed_requests_and_refuses_the_rest(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    stack, base = await ingress_stack(keel_stack, tmp_path)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http, await stack.client() as keel:
        # Signed (generic scheme), intent key from the Idempotency-Key header: starts a run.
        raw, headers = signed({"customer": "ACME"})
        first = await http.post("/hooks/generic/demo", content=raw, headers={**headers, "Idempotency-Key": "wh-1"})
        assert first.status_code == 200, first.text
        assert first.json()["run_id"] == run_id_for("default", "demo", "wh-1") and first.json()["joined"] is False
        await reaches(keel, first.json()["run_id"], "done")

        # The same intent, signed anew (a sender's retry): joins the run.
        raw, headers = signed({"customer": "ACME", "retry": 1})
        again = await http.post("/hooks/generic/demo", content=raw, headers={**headers, "Idempotency-Key": "wh-1"})
        assert again.status_code == 200 and again.json() == {**first.json(), "joined": True}

        # The very same request again: a replay.
        replay = await http.post("/hooks/generic/demo", content=raw, headers={**headers, "Idempotency-Key": "wh-1"})
        assert replay.status_code == 409 and replay.json()["error"]["code"] == "replayed"

        # Per-source intent key path, and Slack's signing scheme.
        raw, headers = signed({"order": {"id": "o-77"}})
        mapped = await http.post("/hooks/orders/demo", content=raw, headers=headers)
        assert mapped.status_code == 200 and mapped.json()["intent_key"] == "o-77"
        raw, headers = signed({"event_id": "Ev123", "text": "hi"}, scheme="slack", secret=SLACK_SECRET)
        slack = await http.post("/hooks/slack/demo", content=raw, headers=headers)
        assert slack.status_code == 200 and slack.json()["intent_key"] == "Ev123"

        refused: dict[str, httpx.Response] = {}
        raw = json.dumps({"x": 1}).encode()
        refused["unsigned"] = await http.post("/hooks/generic/demo", content=raw, headers={"Idempotency-Key": "no-1"})
        _, headers = signed({"something": "else"})
        refused["bad_signature"] = await http.post(
            "/hooks/generic/demo", content=raw, headers={**headers, "Idempotency-Key": "no-2"}
        )
        raw, headers = signed({"x": 1}, at=time.time() - 600)
        refused["stale"] = await http.post(
            "/hooks/generic/demo", content=raw, headers={**headers, "Idempotency-Key": "no-3"}
        )
        raw, headers = signed({"x": 1}, secret="wrong")
        refused["unknown_source"] = await http.post("/hooks/nobody/demo", content=raw, headers=headers)
        raw, headers = signed({"order": {"id": "o-78"}})
        refused["workflow_not_allowed"] = await http.post("/hooks/orders/ledger3", content=raw, headers=headers)

        assert {code: r.status_code for code, r in refused.items()} == {
            "unsigned": 401,
            "bad_signature": 401,
            "stale": 403,
            "unknown_source": 404,
            "workflow_not_allowed": 403,
        }
        assert {code: r.json()["error"]["code"] for code, r in refused.items()} == {c: c for c in refused}
        for key in ("no-1", "no-2", "no-3"):
            assert await keel.run(run_id_for("default", "demo", key)) is None  # nothing started
        assert await keel.run(run_id_for("default", "ledger3", "o-78")) is None

        # An invalid trigger (unknown workflow) is the router's refusal, passed on.
        raw, headers = signed({"x": 1})
        unknown = await http.post("/hooks/generic/nosuch", content=raw, headers={**headers, "Idempotency-Key": "u-1"})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_workflow"
