"""Believing a run event only from its rightful emitter, wherever Keel reads one (decision 026).

NATS permissions say who may publish where; these checks make a reader refuse what got through anyway (a
wide account, a stolen credential): an event whose subject's emitter token and type disagree with the
topology table is never folded, an approval decision whose signature does not verify never counts. Each
refusal is counted (`keel_wrong_emitter_total`, `keel_unverified_decisions_total`) and logged with the
subject.
"""

from typing import TYPE_CHECKING

from keel_contracts import subjects as s
from keel_contracts.approvals import ApprovalDenied, ApprovalGranted
from keel_contracts.codec import DEFAULT_MAX_MESSAGE_BYTES, ContractViolation, WrongEmitter, decode_event
from keel_contracts.envelope import Message
from keel_contracts.events import RunEvent
from keel_contracts.topology import EMITTER_OF
from keel_shared.logging import get_logger
from keel_shared.metrics import UNVERIFIED_DECISIONS, WRONG_EMITTER

if TYPE_CHECKING:
    from keel_shared.keyrings import Verifier

log = get_logger(__name__)


class UnverifiedDecision(ContractViolation):
    """An approval decision whose signature is missing or does not verify: it decides nothing."""

    def __init__(self, detail: str) -> None:
        super().__init__("unverified_decision", detail)


def count_wrong_emitter(service: str, subject: str, detail: str) -> None:
    try:
        _, _, emitter, event_type = s.parse_event_subject(subject)
    except ValueError:
        emitter, event_type = "other", "other"
    # Label values stay a bounded set whatever an attacker writes in the subject.
    WRONG_EMITTER.labels(
        service,
        emitter if emitter in s.SERVICES else "other",
        event_type if event_type in EMITTER_OF else "other",
    ).inc()
    log.warning("wrong_emitter", subject=subject, detail=detail)


def read_event(service: str, subject: str, data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> RunEvent:
    """A stored run event, only if it is where its rightful emitter stores it (`ContractViolation`
    otherwise: `wrong_emitter` counted and logged here, or why it could not be read at all)."""
    try:
        return decode_event(data, max_bytes, subject=subject)
    except WrongEmitter as exc:
        count_wrong_emitter(service, subject, exc.detail)
        raise


def check_decision(service: str, keyring: "Verifier", subject: str, event: Message) -> None:
    """Raise `UnverifiedDecision` (counted, logged) for a grant or denial whose signature does not verify."""
    if not isinstance(event, ApprovalGranted | ApprovalDenied):
        return
    # Imported here: a service that only reads events (the dashboard) never loads the signature library.
    from keel_shared.decisions import decision_problem

    problem = decision_problem(keyring, event)
    if problem is not None:
        UNVERIFIED_DECISIONS.labels(service).inc()
        log.warning("unverified_decision", subject=subject, approval_id=event.body.approval_id, detail=problem)
        raise UnverifiedDecision(f"{event.type} of approval {event.body.approval_id}: {problem}")
