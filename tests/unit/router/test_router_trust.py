"""The router folds only what the rightful emitter stored, and a decision only when its signature
verifies (decision 026): forged events under a run's subjects never move the run, whoever wrote them."""

from __future__ import annotations

import pytest
from engine_parking_kit import decision
from router_testkit import succeeded
from test_engine_approvals import REFUND, to_approval

from keel_contracts import subjects as s
from keel_contracts import topology
from keel_contracts.codec import encode
from keel_contracts.envelope import Message
from keel_contracts.events import RunCompleted, RunCompletedBody
from keel_router.engine import Engine
from keel_router.runs import RunRepository
from keel_shared.eventstore import StoredEvent
from keel_shared.metrics import UNVERIFIED_DECISIONS, WRONG_EMITTER
from keel_shared.signing import Signer
from tests.conftest import TEST_DECISION_SIGNER, trusting


class Stream:
    """Stored events of one stream, as direct gets return them."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    def put(self, message: Message, subject: str | None = None) -> None:
        self.events.append(StoredEvent(len(self.events) + 1, subject or topology.subject_of(message), encode(message)))

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> list[StoredEvent]:
        return [e for e in self.events if e.seq > after_seq]


@pytest.fixture
def parked(engine: Engine, run_log, make_trigger) -> tuple[Stream, object]:
    """A refund run waiting for finance, as stored in the stream."""
    request = to_approval(engine, run_log, make_trigger)
    stream = Stream()
    for _, event in run_log.events:
        stream.put(event)
    return stream, request


def repository(stream: Stream) -> RunRepository:
    return RunRepository(stream, trusting(TEST_DECISION_SIGNER))  # type: ignore[arg-type]


def count(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


async def test_a_signed_grant_from_the_approval_service_is_folded(parked, run_log) -> None:
    stream, request = parked
    stream.put(decision(run_log.run, request, "granted"))

    state = await repository(stream).load("refund", run_log.run.run_id)

    assert state is not None and state.approval(request.body.approval_id).status == "granted"


@pytest.mark.parametrize("emitter", [s.EXECUTOR, s.ROUTER, s.AUDIT, "rogue"])
async def test_a_grant_stored_under_another_emitter_is_never_folded(parked, run_log, emitter: str) -> None:
    stream, request = parked
    grant = decision(run_log.run, request, "granted")
    before = count(WRONG_EMITTER, s.ROUTER, emitter if emitter in s.SERVICES else "other", "approval_granted")
    stream.put(grant, s.event_subject("refund", run_log.run.run_id, emitter, "approval_granted"))

    state = await repository(stream).load("refund", run_log.run.run_id)

    assert state is not None and state.approval(request.body.approval_id).status == "pending"
    assert state.last_seq == len(stream.events)  # skipped, but its sequence counts for the next append
    after = count(WRONG_EMITTER, s.ROUTER, emitter if emitter in s.SERVICES else "other", "approval_granted")
    assert after == before + 1


async def test_an_event_whose_subject_names_another_type_is_never_folded(parked, run_log) -> None:
    stream, _ = parked
    done = RunCompleted(
        run_id=run_log.run.run_id,
        workflow="refund",
        correlation_id="c",
        actor="router",
        dedupe_key="forged",
        body=RunCompletedBody(output={}, reason="forged"),
    )
    # A completion slipped in under the approval service's token, typed as a grant in the subject.
    stream.put(done, s.event_subject("refund", run_log.run.run_id, s.APPROVAL, "approval_granted"))

    state = await repository(stream).load("refund", run_log.run.run_id)

    assert state is not None and state.status.value == "needs_approval"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda g: g.model_copy(update={"body": g.body.model_copy(update={"signature": None})}), id="unsigned"
        ),
        pytest.param(
            lambda g: g.model_copy(update={"body": g.body.model_copy(update={"decided_by": ["mallory"]})}),
            id="altered-after-signing",
        ),
        pytest.param(lambda g: g, id="signed-by-an-untrusted-key"),
    ],
)
async def test_a_grant_whose_signature_does_not_verify_is_never_folded(parked, run_log, forge) -> None:
    stream, request = parked
    grant = decision(run_log.run, request, "granted")
    keyring = trusting(TEST_DECISION_SIGNER)
    if forge(grant) is grant:
        keyring = trusting(Signer.generate())
    before = count(UNVERIFIED_DECISIONS, s.ROUTER)
    stream.put(forge(grant))

    state = await RunRepository(stream, keyring).load("refund", run_log.run.run_id)  # type: ignore[arg-type]

    assert state is not None and state.approval(request.body.approval_id).status == "pending"
    assert count(UNVERIFIED_DECISIONS, s.ROUTER) == before + 1


async def test_forged_outcomes_under_the_approval_token_do_not_complete_a_step(engine, run_log, make_trigger) -> None:
    request = to_approval(engine, run_log, make_trigger)
    stream = Stream()
    for _, event in run_log.events:
        stream.put(event)
    run_log.append([decision(run_log.run, request, "granted")])
    stream.put(run_log.events[-1][1])
    run_log.append(engine.advance(run_log.run, REFUND, None))  # schedules the refund
    for _, event in run_log.events[-2:]:
        stream.put(event)
    forged = succeeded(run_log.run, {"refund_id": "forged"})
    stream.put(forged, s.event_subject("refund", run_log.run.run_id, s.APPROVAL, "step_succeeded"))

    state = await repository(stream).load("refund", run_log.run.run_id)

    assert state is not None and state.in_flight is not None and state.in_flight.step_id == "refund"
    assert state.in_flight.outcome is None
