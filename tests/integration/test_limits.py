"""Every limit of docs/limits.md on real processes, as whoever hits it sees it: `keel trigger` (and its
exit code), the webhook ingress's HTTP answer, the run's `blocked` state with the limit in its reason."""

import json
from pathlib import Path

import httpx
import pytest

from keel_cli.client import TriggerRejected
from keel_executor.tools.demo import ledger_counts
from tests.conftest import StackFactory, eventually
from tests.integration.router_kit import keel_cli, reaches
from tests.integration.test_router_timers import policy_file
from tests.integration.test_router_webhooks import SECRET, signed

pytestmark = pytest.mark.integration


async def test_a_trigger_beyond_the_runs_in_flight_limit_is_refused_with_its_reason_but_joining_never_is(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await keel_stack(
        services=("router", "executor", "ingress"),
        env={"KEEL_MAX_RUNS_IN_FLIGHT": "2", "KEEL_WEBHOOK_SECRET_GENERIC": SECRET},
    )
    url = stack.nats_url
    ingress = f"http://127.0.0.1:{stack.stack.children['ingress'].spec.metrics_port}"
    async with await stack.client() as keel, httpx.AsyncClient(base_url=ingress, timeout=60) as http:
        # Two runs parked for a person: in flight, though nothing runs.
        first = await keel.trigger("review", {"customer": "A"}, "inflight-1")
        await keel.trigger("review", {"customer": "B"}, "inflight-2")
        await reaches(keel, first.run_id, "needs_human")

        code, _, err = await keel_cli("trigger", "review", "--key", "inflight-3", "--wait", url=url)
        assert code == 2, err
        assert "trigger rejected (too_many_runs): tenant 'default' has 2 runs in flight" in err
        assert "the limit is 2 (KEEL_MAX_RUNS_IN_FLIGHT)" in err

        raw, headers = signed({"customer": "C"})
        hook = await http.post("/hooks/generic/review", content=raw, headers={**headers, "Idempotency-Key": "wh-3"})
        assert hook.status_code == 429 and hook.json()["error"]["code"] == "too_many_runs"

        # Joining the run an intent already has is never refused.
        joined = await keel.trigger("review", {"customer": "A"}, "inflight-1")
        assert joined.joined and joined.run_id == first.run_id

        # The count is the stream's: a restarted router still knows both runs.
        await stack.restart("router")
        with pytest.raises(TriggerRejected) as refused:
            await keel.trigger("review", {}, "inflight-4", timeout=60)
        assert refused.value.reason == "too_many_runs"

        # A run that ends frees its place; the sender of the refused webhook may send it again as it was.
        await keel.cancel(first.run_id, requested_by="ops", reason="make room")
        again = await eventually(lambda: _post(http, raw, headers), timeout=60)
        assert again.json()["joined"] is False


async def _post(http: httpx.AsyncClient, raw: bytes, headers: dict[str, str]) -> httpx.Response | None:
    answer = await http.post("/hooks/generic/review", content=raw, headers={**headers, "Idempotency-Key": "wh-3"})
    if answer.status_code == 429:
        return None
    assert answer.status_code == 200, answer.text
    return answer


async def test_a_run_over_max_steps_per_run_ends_blocked_and_keel_trigger_wait_says_why(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await keel_stack(env=policy_file(tmp_path, "  max_steps_per_run: 2\n"))
    code, out, err = await keel_cli(
        "trigger", "ledger3", "--input", '{"delay": 0}', "--key", "steps", "--wait", url=stack.nats_url
    )
    assert code == 1, err
    assert "status blocked: cap max_steps_per_run reached: 2 steps started, limit 2; not starting step three" in out


async def test_an_oversized_trigger_is_refused_too_large_whether_the_stream_or_the_router_refuses_it(
    keel_stack: StackFactory,
) -> None:
    # The stream takes 16 KiB (`keel init` with KEEL_MAX_MESSAGE_BYTES); the router's guard takes 8 KiB.
    stack = await keel_stack(env={"KEEL_MAX_MESSAGE_BYTES": "8192"}, max_message_bytes=16384)
    url = stack.nats_url

    stored_nowhere = json.dumps({"customer": "x" * 20_000})
    code, _, err = await keel_cli("trigger", "demo", "--input", stored_nowhere, "--wait", url=url)
    assert code == 2, err
    assert "trigger rejected (too_large): the trigger_run is " in err
    assert "the server refused to store it (message size exceeds maximum allowed)" in err

    dead_lettered = json.dumps({"customer": "x" * 10_000})
    code, _, err = await keel_cli("trigger", "demo", "--input", dead_lettered, "--wait", url=url)
    assert code == 2, err
    assert "trigger rejected (too_large): message is " in err and "bytes, the limit is 8192" in err

    code, out, _ = await keel_cli("trigger", "demo", "--input", '{"customer": "ACME"}', "--wait", url=url)
    assert code == 0 and "status done" in out  # nothing is stuck behind the refused ones


async def test_payload_limits_block_the_run_before_anything_is_sent_or_anyone_is_asked(
    keel_stack: StackFactory, tmp_path: Path
) -> None:
    env = policy_file(tmp_path, "  max_steps_per_run: 200\nlimits:\n  max_payload_bytes: 4096\n")
    stack = await keel_stack(
        services=("router", "executor", "approval"), env={**env, "KEEL_MAX_APPROVAL_PAYLOAD_BYTES": "1024"}
    )
    url = stack.nats_url
    async with await stack.client() as keel:
        code, out, err = await keel_cli(
            "trigger", "gated_ledger", "--input", json.dumps({"amount": "9" * 2000}), "--wait", url=url
        )
        assert code == 1, err
        assert "status blocked: limit max_approval_payload_bytes exceeded: the payload of post to approve is" in out
        assert "limit 1024 (KEEL_MAX_APPROVAL_PAYLOAD_BYTES); not asking for approval of post" in out

        big_input = await keel.trigger("ledger3", {"delay": "1" * 5000}, "big-input")
        view = await reaches(keel, big_input.run_id, "blocked")
        assert view.reason.startswith("limit max_payload_bytes exceeded: the input of one is ")
        assert view.reason.endswith("bytes, limit 4096; not starting step one")
        assert ledger_counts(stack.ledger_url, big_input.run_id)["invocations"] == 0

    inbox = f"http://127.0.0.1:{stack.stack.children['approval'].spec.env['KEEL_APPROVAL_HTTP_PORT']}"
    async with httpx.AsyncClient(base_url=inbox, timeout=30) as http:
        oversized = await http.post(
            "/api/v1/approvals/any/approve",
            content=b'{"payload_hash": "' + b"0" * 40_000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
    assert oversized.status_code == 413 and oversized.json()["error"] == "too_large"
