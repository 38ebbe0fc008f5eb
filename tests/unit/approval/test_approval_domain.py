"""The approval rules on their own: who may decide, quorum, the lifecycle and the hash binding."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from approval_testkit import T0

from keel_approval import domain
from keel_approval.domain import ApprovalState, Approver, Conflict, Forbidden, Invalid, Status, Vote

HASH = "sha256:" + "a" * 64
FINANCE = Approver("fiona", frozenset({"finance"}))
FINANCE2 = Approver("frank", frozenset({"finance"}))
SECURITY = Approver("sam", frozenset({"security"}))
BOTH = Approver("bea", frozenset({"finance", "security"}))


def state(**overrides: object) -> ApprovalState:
    base = ApprovalState(
        approval_id="a1",
        roles=("finance",),
        quorum=1,
        payload_hash=HASH,
        requested_by="agent:refund-bot",
        expires_at=T0 + timedelta(hours=1),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_a_finance_approver_grants_a_finance_request() -> None:
    decision = domain.approve(state(), FINANCE, HASH, T0, "looks right")
    assert decision.kind == "granted" and decision.status is Status.APPROVED
    assert decision.votes == (Vote("fiona", "finance", T0, "looks right"),)


def test_a_security_approver_cannot_approve_or_deny_a_finance_request() -> None:
    with pytest.raises(Forbidden) as exc:
        domain.approve(state(), SECURITY, HASH, T0)
    assert exc.value.code == "role_mismatch" and exc.value.http_status == 403
    with pytest.raises(Forbidden):
        domain.deny(state(), SECURITY, HASH, T0, "no")


def test_and_a_finance_approver_cannot_approve_an_access_change() -> None:
    with pytest.raises(Forbidden, match="security"):
        domain.approve(state(roles=("security",)), FINANCE, HASH, T0)


@pytest.mark.parametrize("requested_by", ["fiona", "FIONA", "user:fiona", " fiona "])
def test_the_requester_can_never_decide_its_own_request(requested_by: str) -> None:
    with pytest.raises(Forbidden) as exc:
        domain.approve(state(requested_by=requested_by), FINANCE, HASH, T0)
    assert exc.value.code == "requester_cannot_decide"
    with pytest.raises(Forbidden):
        domain.deny(state(requested_by=requested_by), FINANCE, HASH, T0, "mine")


def test_a_role_the_approver_does_not_hold_cannot_be_chosen() -> None:
    with pytest.raises(Forbidden):
        domain.approve(state(roles=("finance", "security")), FINANCE, HASH, T0, role="security")


def test_a_quorum_needs_that_many_distinct_approvers() -> None:
    first = domain.approve(state(quorum=2), FINANCE, HASH, T0)
    assert first.kind == "vote" and first.status is Status.PENDING
    after_first = state(quorum=2, votes=first.votes)
    with pytest.raises(Conflict) as exc:
        domain.approve(after_first, FINANCE, HASH, T0)
    assert exc.value.code == "already_voted"
    second = domain.approve(after_first, FINANCE2, HASH, T0 + timedelta(minutes=1))
    assert second.kind == "granted"
    assert [v.approver for v in second.votes] == ["fiona", "frank"]


def test_several_roles_need_one_approver_each() -> None:
    two_roles = state(roles=("finance", "security"))
    first = domain.approve(two_roles, BOTH, HASH, T0)
    # One person holding both roles covers one of them: separation of duties needs a second person.
    assert first.kind == "vote" and first.vote.role == "finance"
    second = domain.approve(replace(two_roles, votes=first.votes), SECURITY, HASH, T0)
    assert second.kind == "granted" and [v.role for v in second.votes] == ["finance", "security"]


def test_the_second_approver_is_given_the_role_still_uncovered() -> None:
    two_roles = state(roles=("finance", "security"))
    first = domain.approve(two_roles, FINANCE, HASH, T0)
    second = domain.approve(replace(two_roles, votes=first.votes), BOTH, HASH, T0)
    assert second.vote.role == "security" and second.kind == "granted"


def test_one_denial_settles_the_request_even_with_a_quorum() -> None:
    partly = domain.approve(state(quorum=3), FINANCE, HASH, T0)
    decision = domain.deny(state(quorum=3, votes=partly.votes), FINANCE2, HASH, T0, "wrong amount")
    assert decision.kind == "denied" and decision.status is Status.DENIED


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_denial_needs_a_reason(reason: str) -> None:
    with pytest.raises(Invalid) as exc:
        domain.deny(state(), FINANCE, HASH, T0, reason)
    assert exc.value.code == "reason_required" and exc.value.http_status == 422


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.APPROVED, "already_decided"),
        (Status.DENIED, "already_decided"),
        (Status.EXPIRED, "expired"),
        (Status.ESCALATED, "expired"),
        (Status.SUPERSEDED, "superseded"),
    ],
)
def test_a_settled_request_cannot_be_decided_again(status: Status, code: str) -> None:
    for decide in (
        lambda s: domain.approve(s, FINANCE, HASH, T0),
        lambda s: domain.deny(s, FINANCE, HASH, T0, "no"),
    ):
        with pytest.raises(Conflict) as exc:
            decide(state(status=status, superseded_by="a2"))
        assert exc.value.code == code and exc.value.http_status == 409


def test_a_request_past_its_expiry_cannot_be_decided_even_before_its_timer_fires() -> None:
    with pytest.raises(Conflict) as exc:
        domain.approve(state(), FINANCE, HASH, T0 + timedelta(hours=1))
    assert exc.value.code == "expired"


def test_a_decision_binds_to_the_hash_of_the_payload_the_approver_saw() -> None:
    with pytest.raises(Conflict) as exc:
        domain.approve(state(), FINANCE, "sha256:" + "b" * 64, T0)
    assert exc.value.code == "payload_changed"


def test_expiry_acts_only_on_a_pending_request_whose_time_has_come() -> None:
    assert domain.expiry(state(), T0, "manager_review") is None  # fired early
    due = T0 + timedelta(hours=1)
    assert domain.expiry(state(), due, "manager_review") is Status.ESCALATED
    assert domain.expiry(state(), due, None) is Status.EXPIRED
    assert domain.expiry(state(status=Status.APPROVED), due, None) is None


def test_quorum_met_counts_people_not_votes() -> None:
    votes = (Vote("fiona", "finance", T0), Vote("FIONA", "finance", T0))
    assert not domain.quorum_met(("finance",), 2, votes)
