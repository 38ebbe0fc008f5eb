"""Claims in the real KV bucket: what they remember, and the dead letter of a command that never ends."""

from __future__ import annotations

import nats
import pytest

from keel_contracts import subjects as s
from keel_contracts.codec import decode
from keel_contracts.deadletter import DeadLetter
from keel_executor.claims import ClaimState, KvClaims
from keel_executor.tools.demo import ledger_counts
from keel_shared.natsserver import NatsServer
from keel_shared.provisioning import provision
from keel_shared.settings import KeelSettings
from tests.conftest import StackFactory, eventually

pytestmark = pytest.mark.integration


async def test_a_claim_remembers_its_holders_and_their_errors(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision(js, KeelSettings())
        claims = KvClaims(await js.key_value(s.CLAIMS_BUCKET))

        first = await claims.claim("r.step.1.1", "ex-1")
        assert first.state is ClaimState.NEW
        await claims.note_error("r.step.1.1", "ex-1", "TimeoutError: publish timed out")
        await claims.note_error("r.step.1.1", "ex-other", "not the holder: ignored")
        taken = await claims.claim("r.step.1.1", "ex-2")
        assert (taken.state, taken.previous_holder) == (ClaimState.TAKEN_OVER, "ex-1")

        history = await claims.describe("r.step.1.1")
        assert history is not None
        lines = history.splitlines()
        assert lines[-2].endswith("running by ex-1: TimeoutError: publish timed out")
        assert lines[-1].endswith("running by ex-2 (took over from ex-1)")
        assert "ex-other" not in history
        assert await claims.describe("never.claimed") is None
    finally:
        await nc.close()


async def test_a_command_that_exhausts_its_deliveries_is_dead_lettered_with_its_claim_history(
    keel_stack: StackFactory,
) -> None:
    # One delivery allowed: the executor is killed mid-call, so the command's second delivery is refused.
    stack = await keel_stack(env={"KEEL_MAX_DELIVERIES": "1"})
    async with await stack.client() as keel:
        answer = await keel.trigger("ledger3", {"delay": 30}, "exhausted")
        await eventually(lambda: ledger_counts(stack.ledger_url, answer.run_id)["invocations"] >= 1)
        stack.kill("executor")
        await stack.restart("executor")

    nc = await nats.connect(stack.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(s.DLQ_ALL, stream=s.DLQ_STREAM)
        letter = None
        while letter is None:
            for msg in await sub.fetch(1, timeout=60):
                candidate = decode(DeadLetter, msg.data)
                if candidate.reason == "max_deliveries" and candidate.service == s.EXECUTOR:
                    letter = candidate
    finally:
        await nc.close()
    assert letter.run_id == answer.run_id
    assert "delivered 2 times" in letter.detail
    assert "history:" in letter.detail and "running by executor" in letter.detail, letter.detail
    assert ledger_counts(stack.ledger_url, answer.run_id)["effects"] == 0
