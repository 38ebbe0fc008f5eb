"""The service over a real (SQLite) store: requests, decisions, supersession, expiry, the outbox and
rebuilding the projection from events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from approval_testkit import DECISION_SIGNER, REFUND, T0, Clock, Outbox, request

from keel_approval.domain import Approver, Conflict, Forbidden, Invalid, NotFound, Status
from keel_approval.service import ApprovalService
from keel_approval.store import ApprovalStore, TooEarly, UnknownApproval
from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalWithdrawn,
    ApprovalWithdrawnBody,
    payload_hash,
    proof_of,
)
from keel_contracts.codec import ContractViolation
from keel_shared.decisions import proof_problem
from keel_shared.signing import Signer
from tests.conftest import trusting

FIONA = Approver("fiona", frozenset({"finance"}))
FRANK = Approver("frank", frozenset({"finance"}))
SAM = Approver("sam", frozenset({"security"}))
HASH = payload_hash(REFUND)


async def test_a_request_is_recorded_once_and_its_expiry_scheduled(service: ApprovalService, outbox: Outbox) -> None:
    first = await service.on_requested(request(), seq=5)
    again = await service.on_requested(request(), seq=5)  # a redelivery
    assert first.inserted and not again.inserted
    assert first.record.status is Status.PENDING and first.record.payload == REFUND
    # Scheduling again is harmless (one schedule per subject) and covers a crash before the first one.
    assert [r.approval_id for r in outbox.scheduled] == ["appr-1", "appr-1"]
    assert [a.approval_id for a in await service.inbox(FIONA)] == ["appr-1"]
    assert await service.inbox(SAM) == []


async def test_a_request_whose_hash_is_not_its_payloads_is_refused(service: ApprovalService) -> None:
    with pytest.raises(ContractViolation, match="payload_hash"):
        await service.on_requested(request(bad_hash=True), seq=1)
    assert service.store.get("appr-1") is None


async def test_a_finance_approval_emits_one_grant_bound_to_the_hash(service: ApprovalService, outbox: Outbox) -> None:
    await service.on_requested(request(), seq=1)
    decided = await service.approve("appr-1", FIONA, HASH, "checked the charges")
    assert decided.record.status is Status.APPROVED and decided.record.published
    [event] = outbox.published
    assert isinstance(event, ApprovalGranted)
    assert event.body.payload_hash == HASH and event.body.decided_by == ["fiona"] and event.body.roles == ["finance"]
    assert (event.run_id, event.workflow, event.step_id, event.actor) == ("r1", "refund", "approve_refund", "approval")
    assert event.causation_id == service.store.get("appr-1").request_event_id  # type: ignore[union-attr]

    for attempt in (
        service.approve("appr-1", FIONA, HASH),
        service.approve("appr-1", FRANK, HASH),
        service.deny("appr-1", FRANK, HASH, "changed my mind"),
    ):
        with pytest.raises(Conflict) as exc:
            await attempt
        assert exc.value.code == "already_decided"
    assert len(outbox.published) == 1
    assert service.store.get("appr-1").decided_by == ("fiona",)  # type: ignore[union-attr]


async def test_a_security_approver_and_the_requester_are_refused_and_nothing_changes(
    service: ApprovalService, outbox: Outbox
) -> None:
    await service.on_requested(request(requested_by="user:fiona"), seq=1)
    with pytest.raises(Forbidden) as exc:
        await service.approve("appr-1", SAM, HASH)
    assert exc.value.code == "role_mismatch"
    with pytest.raises(Forbidden) as exc:
        await service.approve("appr-1", FIONA, HASH)
    assert exc.value.code == "requester_cannot_decide"
    with pytest.raises(Forbidden):
        await service.visible(SAM, "appr-1")
    record = service.store.get("appr-1")
    assert record is not None and record.status is Status.PENDING and record.votes == ()
    assert outbox.published == []


async def test_a_denial_needs_a_reason_and_carries_it(service: ApprovalService, outbox: Outbox) -> None:
    await service.on_requested(request(), seq=1)
    with pytest.raises(Invalid):
        await service.deny("appr-1", FIONA, HASH, "  ")
    assert outbox.published == []
    await service.deny("appr-1", FIONA, HASH, "amount does not match the ticket")
    [event] = outbox.published
    assert isinstance(event, ApprovalDenied) and event.body.reason == "amount does not match the ticket"
    assert event.body.payload_hash == HASH


async def test_a_changed_payload_is_not_approved(service: ApprovalService, outbox: Outbox) -> None:
    await service.on_requested(request(), seq=1)
    with pytest.raises(Conflict) as exc:
        await service.approve("appr-1", FIONA, payload_hash({**REFUND, "amount": 999999}))
    assert exc.value.code == "payload_changed" and outbox.published == []


async def test_an_unknown_approval_is_not_found(service: ApprovalService) -> None:
    with pytest.raises(NotFound):
        await service.approve("nope", FIONA, HASH)


async def test_a_quorum_grants_on_the_last_needed_approval(service: ApprovalService, outbox: Outbox) -> None:
    await service.on_requested(request(quorum=2), seq=1)
    first = await service.approve("appr-1", FIONA, HASH, "ok")
    assert not first.decision.final and first.record.status is Status.PENDING and outbox.published == []
    second = await service.approve("appr-1", FRANK, HASH, "ok too")
    assert second.decision.final
    [event] = outbox.published
    assert isinstance(event, ApprovalGranted) and event.body.decided_by == ["fiona", "frank"]


async def test_a_new_request_for_the_same_step_supersedes_the_pending_one(
    service: ApprovalService, outbox: Outbox, clock: Clock
) -> None:
    await service.on_requested(request("appr-1"), seq=1)
    newer = request("appr-2", payload={**REFUND, "amount": 3000}, occurred_at=T0 + timedelta(minutes=5))
    applied = await service.on_requested(newer, seq=7)
    assert applied.superseded == ["appr-1"]
    old = service.store.get("appr-1")
    assert old is not None and old.status is Status.SUPERSEDED and old.superseded_by == "appr-2"
    assert any(h.what == "superseded" and "appr-2" in h.why for h in old.history())
    with pytest.raises(Conflict) as exc:
        await service.approve("appr-1", FIONA, HASH)
    assert exc.value.code == "superseded"
    assert [a.approval_id for a in await service.inbox(FIONA)] == ["appr-2"]
    # An older request delivered late never replaces the newer one.
    late = await service.on_requested(request("appr-0"), seq=0)
    assert late.record.status is Status.SUPERSEDED and late.record.superseded_by == "appr-1"
    assert outbox.published == []


async def test_expiry_escalates_once_and_then_nothing_can_be_decided(
    service: ApprovalService, outbox: Outbox, clock: Clock
) -> None:
    await service.on_requested(request(), seq=1)
    clock.advance(minutes=59, seconds=59.5)
    with pytest.raises(TooEarly) as early:
        await service.expire("appr-1")
    assert 0 < early.value.remaining <= 0.5
    clock.advance(seconds=1)
    record = await service.expire("appr-1")
    assert record is not None and record.status is Status.ESCALATED
    [event] = outbox.published
    assert isinstance(event, ApprovalExpired) and event.body.escalate_to == "manager_review"
    assert await service.expire("appr-1") is None  # a second firing does nothing
    with pytest.raises(Conflict) as exc:
        await service.approve("appr-1", FIONA, HASH)
    assert exc.value.code == "expired" and len(outbox.published) == 1


async def test_without_an_escalation_path_it_simply_expires(service: ApprovalService, clock: Clock) -> None:
    await service.on_requested(request(escalate_to=None), seq=1)
    clock.advance(hours=2)
    record = await service.expire("appr-1")
    assert record is not None and record.status is Status.EXPIRED


async def test_deciding_after_the_deadline_expires_the_request_even_if_its_timer_is_late(
    service: ApprovalService, outbox: Outbox, clock: Clock
) -> None:
    await service.on_requested(request(), seq=1)
    clock.advance(hours=1, seconds=1)
    with pytest.raises(Conflict) as exc:
        await service.approve("appr-1", FIONA, HASH)
    assert exc.value.code == "expired"
    assert outbox.types() == ["approval_expired"]


async def test_a_decision_made_while_nats_is_down_is_published_later_exactly_once(
    service: ApprovalService, outbox: Outbox
) -> None:
    await service.on_requested(request(), seq=1)
    outbox.down = True
    decided = await service.approve("appr-1", FIONA, HASH)
    assert decided.record.status is Status.APPROVED and outbox.published == []
    assert not service.store.get("appr-1").published  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        await service.approve("appr-1", FRANK, HASH)
    outbox.down = False
    assert await service.flush_outbox() == 1
    assert await service.flush_outbox() == 0
    assert outbox.types() == ["approval_granted"]


async def test_the_store_rebuilds_from_the_events_alone(
    service: ApprovalService, outbox: Outbox, store: ApprovalStore, clock: Clock
) -> None:
    requests = [
        (1, request("a1", run_id="r1")),
        (2, request("a2", run_id="r2")),
        (3, request("a3", run_id="r3", quorum=2)),
        (4, request("a4", run_id="r4")),
        (6, request("a5", run_id="r4", occurred_at=T0 + timedelta(minutes=1))),
    ]
    for seq, event in requests:
        await service.on_requested(event, seq)
    await service.approve("a1", FIONA, HASH)
    await service.deny("a2", FIONA, HASH, "no")
    await service.approve("a3", FIONA, HASH)  # one of two: not an event
    before = {a.approval_id: a.status for a in store.find()}

    events = sorted([*requests, *((10 + i, m) for i, m in enumerate(outbox.published))], key=lambda e: e[0])
    await service.rebuild(events, wipe=True)
    after = {a.approval_id: a for a in store.find()}
    assert {k: v.status for k, v in after.items()} == before
    assert after["a1"].decided_by == ("fiona",) and after["a1"].published
    assert after["a2"].decision_reason == "no"
    assert after["a4"].status is Status.SUPERSEDED and after["a4"].superseded_by == "a5"
    # The pending quorum vote is no event, so a rebuild carries it over.
    assert [v.approver for v in after["a3"].votes] == ["fiona"]
    await service.approve("a3", FRANK, HASH)
    assert outbox.types()[-1] == "approval_granted"


async def test_a_grant_found_in_the_stream_wins_over_a_derived_supersession(
    service: ApprovalService, store: ApprovalStore, outbox: Outbox
) -> None:
    await service.on_requested(request("a1"), seq=1)
    await service.approve("a1", FIONA, HASH)
    [grant] = outbox.published
    # Replay in an order where the newer request lands before the grant: the grant is a fact.
    await service.rebuild([(1, request("a1")), (2, request("a2")), (3, grant)], wipe=True)
    record = store.get("a1")
    assert record is not None and record.status is Status.APPROVED and record.superseded_by is None


def withdrawal(approval_id: str = "appr-1", run_id: str = "r1") -> ApprovalWithdrawn:
    return ApprovalWithdrawn(
        run_id=run_id,
        workflow="refund",
        step_id="approve_refund",
        correlation_id="c-1",
        actor="router",
        dedupe_key=f"{run_id}:approval:{approval_id}:withdrawn",
        occurred_at=T0 + timedelta(minutes=5),
        body=ApprovalWithdrawnBody(
            approval_id=approval_id, because="run_cancelled", reason="the run ended (run_cancelled)"
        ),
    )


async def test_a_grant_is_signed_by_the_service_key_over_the_write_it_unlocks(
    service: ApprovalService, outbox: Outbox
) -> None:
    await service.on_requested(request(), seq=1)
    await service.approve("appr-1", FIONA, HASH)
    [event] = outbox.published
    assert isinstance(event, ApprovalGranted)

    proof = proof_of(event)
    assert proof is not None and proof.approves_step == "issue_refund" and proof.key_id == DECISION_SIGNER.key_id
    assert proof_problem(trusting(DECISION_SIGNER), proof) is None
    assert proof_problem(trusting(Signer.generate()), proof) is not None


async def test_a_request_withdrawn_by_its_runs_end_can_no_longer_be_decided(
    service: ApprovalService, outbox: Outbox
) -> None:
    await service.on_requested(request(), seq=1)

    withdrawn = await service.on_withdrawn(withdrawal())

    assert withdrawn is not None and withdrawn.status is Status.WITHDRAWN
    assert await service.inbox(FIONA) == []
    for attempt in (service.approve("appr-1", FIONA, HASH), service.deny("appr-1", FIONA, HASH, "no")):
        with pytest.raises(Conflict) as exc:
            await attempt
        assert exc.value.code == "withdrawn" and exc.value.http_status == 409
    assert outbox.published == []
    history = service.store.get("appr-1").history()  # type: ignore[union-attr]
    assert history[-1].what == "withdrawn" and "run_cancelled" in history[-1].why
    assert [r.approval_id for r in await service.history(FIONA)] == ["appr-1"]


async def test_a_withdrawal_after_a_decision_changes_nothing(service: ApprovalService) -> None:
    await service.on_requested(request(), seq=1)
    await service.approve("appr-1", FIONA, HASH)

    assert await service.on_withdrawn(withdrawal()) is None
    assert service.store.get("appr-1").status is Status.APPROVED  # type: ignore[union-attr]


async def test_a_withdrawal_naming_another_runs_approval_changes_nothing(service: ApprovalService) -> None:
    await service.on_requested(request(), seq=1)

    assert await service.on_withdrawn(withdrawal(run_id="r-other")) is None
    assert service.store.get("appr-1").status is Status.PENDING  # type: ignore[union-attr]


async def test_a_rebuilt_store_keeps_withdrawals(service: ApprovalService) -> None:
    await service.rebuild([(1, request()), (2, withdrawal())], wipe=True)

    assert service.store.get("appr-1").status is Status.WITHDRAWN  # type: ignore[union-attr]


async def test_a_withdrawal_whose_request_is_not_stored_yet_says_so(service: ApprovalService) -> None:
    # The consumer retries it (the request is earlier in the stream, handled a moment later).
    with pytest.raises(UnknownApproval):
        await service.on_withdrawn(withdrawal())
    await service.on_requested(request(), seq=1)
    assert (await service.on_withdrawn(withdrawal())) is not None
