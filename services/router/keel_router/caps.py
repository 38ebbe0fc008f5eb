"""The policy's caps and limits, checked before a run starts another step, attempt or approval: a run never
loops forever, and nothing the router is about to send is larger than the limits say (docs/limits.md)."""

from pydantic import JsonValue

from keel_contracts.approvals import approval_payload_bytes
from keel_contracts.envelope import Message
from keel_contracts.events import RunBlocked, RunBlockedBody
from keel_router.aggregate import RunState
from keel_router.emit import Emitter, run_context
from keel_router.workflow.policy import CapHit, Policy, RunCounters, check_caps, check_run_data, json_size


def counters(state: RunState, em: Emitter) -> RunCounters:
    return RunCounters(
        steps_started=state.steps_entered,
        total_attempts=len(state.attempts),
        elapsed_seconds=max(0.0, (em.clock() - state.started_at).total_seconds()),
    )


def blocked(
    em: Emitter, state: RunState, hit: CapHit, not_doing: str, step_id: str | None, causation_id: str | None
) -> Message:
    """The `run_blocked` event for `hit`; `not_doing` says what the run does not do because of it."""
    return RunBlocked(
        **em.env(state, f"{state.run_id}:blocked:{state.last_seq}", causation_id, step_id=step_id),
        body=RunBlockedBody(cap=hit.cap, limit=hit.limit, value=hit.value, reason=f"{hit.reason}; {not_doing}"[:1024]),
    )


def blocked_by_cap(
    em: Emitter, state: RunState, policy: Policy, what: str, step_id: str, causation_id: str | None
) -> Message | None:
    """A `run_blocked` event when a cap, or the size of the run's data, forbids starting `what`
    (e.g. "step charge"), else None."""
    hit = check_caps(counters(state, em), policy) or check_run_data(run_context(state), policy)
    if hit is None:
        return None
    return blocked(em, state, hit, f"not starting {what}", step_id, causation_id)


def blocked_by_payload(
    em: Emitter,
    state: RunState,
    policy: Policy,
    payload: JsonValue,
    step_id: str,
    causation_id: str | None,
) -> Message | None:
    """A `run_blocked` event when the input rendered for a tool or decide step is over `max_payload_bytes`."""
    size = json_size(payload)
    limit = policy.limits.max_payload_bytes
    if size <= limit:
        return None
    why = f"limit max_payload_bytes exceeded: the input of {step_id} is {size} bytes, limit {limit}"
    hit = CapHit("max_payload_bytes", limit, size, why)
    return blocked(em, state, hit, f"not starting step {step_id}", step_id, causation_id)


def blocked_by_approval_payload(
    em: Emitter,
    state: RunState,
    payload: JsonValue,
    limit: int,
    asking_step: str,
    write_step: str,
    causation_id: str | None,
) -> Message | None:
    """A `run_blocked` event when the payload an approver would have to read is over the approval limit:
    the approval service would refuse to show it, so the run stops here instead of waiting for nobody."""
    size = approval_payload_bytes(payload)
    if size <= limit:
        return None
    why = (
        f"limit max_approval_payload_bytes exceeded: the payload of {write_step} to approve is {size} bytes, "
        f"limit {limit} (KEEL_MAX_APPROVAL_PAYLOAD_BYTES)"
    )
    hit = CapHit("max_approval_payload_bytes", limit, size, why)
    return blocked(em, state, hit, f"not asking for approval of {write_step}", asking_step, causation_id)
