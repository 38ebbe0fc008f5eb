"""Where attempt outcomes go: the run's event stream, appended without a sequence check.

An outcome is a fact about an attempt that stands whatever else the run did meanwhile, so it must not
lose a race with the router; its dedupe key keeps a repeated report to one stored event.
"""

from nats.errors import Error as NatsError

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, decode_event, encode
from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepFailedBody, StepSucceeded
from keel_executor.execution import outcome_key
from keel_shared.eventstore import EventStore
from keel_shared.publishing import refused_as_too_large


class StreamOutcomes:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def find(self, cmd: ExecuteStep) -> int | None:
        wanted = outcome_key(cmd)
        for stored in await self._store.read(f"keel.run.{cmd.workflow}.{cmd.run_id}.{s.EXECUTOR}.*"):
            try:
                event = decode_event(stored.data)
            except ContractViolation:
                continue
            if event.dedupe_key == wanted:
                return stored.seq
        return None

    async def record(self, event: Message) -> int:
        try:
            return await self._store.append_unguarded(event)
        except NatsError as exc:
            if not (isinstance(event, StepSucceeded) and refused_as_too_large(exc)):
                raise
            # Retrying can never store it, and the run would wait for this outcome for ever: record why.
            return await self._store.append_unguarded(output_too_large(event, len(encode(event))))


def output_too_large(event: StepSucceeded, size: int) -> StepFailed:
    """The outcome recorded instead of a success whose output the event stream refuses (KEEL_MAX_MESSAGE_BYTES)."""
    body = event.body
    return StepFailed(
        **event.model_dump(exclude={"id", "type", "body"}),
        body=StepFailedBody(
            tool=body.tool,
            error_class=ErrorClass.PERMANENT,
            error_type="OutputTooLarge",
            message=(
                f"{body.tool} returned an output that makes a {size}-byte step_succeeded, more than the event "
                "stream stores (KEEL_MAX_MESSAGE_BYTES): the step ran, its output is not recorded"
            ),
            started_at=body.started_at,
            finished_at=body.finished_at,
            executor_id=body.executor_id,
        ),
    )
