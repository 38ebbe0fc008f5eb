"""The policy's caps, checked before a run starts another step or attempt: a run never loops forever."""

from keel_contracts.envelope import Message
from keel_contracts.events import RunBlocked, RunBlockedBody
from keel_router.aggregate import RunState
from keel_router.emit import Emitter
from keel_router.workflow.policy import Policy, RunCounters, check_caps


def counters(state: RunState, em: Emitter) -> RunCounters:
    return RunCounters(
        steps_started=state.steps_entered,
        total_attempts=len(state.attempts),
        elapsed_seconds=max(0.0, (em.clock() - state.started_at).total_seconds()),
    )


def blocked_by_cap(
    em: Emitter, state: RunState, policy: Policy, what: str, step_id: str, causation_id: str | None
) -> Message | None:
    """A `run_blocked` event when a cap forbids starting `what` (e.g. "step charge"), else None."""
    hit = check_caps(counters(state, em), policy)
    if hit is None:
        return None
    return RunBlocked(
        **em.env(state, f"{state.run_id}:blocked:{state.last_seq}", causation_id, step_id=step_id),
        body=RunBlockedBody(
            cap=hit.cap, limit=hit.limit, value=hit.value, reason=f"{hit.reason}; not starting {what}"[:1024]
        ),
    )
