"""Where attempt outcomes go: the run's event stream.

An outcome is a fact about an attempt that stands whatever else the run did meanwhile, so it never
loses a race with the router: it is first appended expecting the attempt's `step_scheduled` to be the
run's last event (the server then vouches that nothing sits between them, and the router folds it in
without reading the run), and when something else was stored in between, appended without the check.
Its dedupe key keeps a repeated report to one stored event.
"""

from nats.errors import Error as NatsError

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, encode
from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepFailedBody, StepSucceeded
from keel_executor.execution import outcome_key
from keel_shared.eventstore import ConcurrencyConflict, EventStore
from keel_shared.publishing import refused_as_too_large
from keel_shared.trust import read_event


class StreamOutcomes:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def find(self, cmd: ExecuteStep) -> int | None:
        wanted = outcome_key(cmd)
        for stored in await self._store.read(f"keel.run.{cmd.workflow}.{cmd.run_id}.{s.EXECUTOR}.*"):
            try:
                event = read_event(s.EXECUTOR, stored.subject, stored.data)
            except ContractViolation:
                continue
            if event.dedupe_key == wanted:
                return stored.seq
        return None

    async def record(self, event: Message, follows_seq: int | None = None) -> int:
        try:
            return await self._append(event, follows_seq)
        except NatsError as exc:
            if not (isinstance(event, StepSucceeded) and refused_as_too_large(exc)):
                raise
            # Retrying can never store it, and the run would wait for this outcome for ever: record why.
            return await self._append(output_too_large(event, len(encode(event))), follows_seq)

    async def _append(self, event: Message, follows_seq: int | None) -> int:
        if follows_seq is not None:
            try:
                return await self._store.append([event], follows_seq)
            except ConcurrencyConflict:
                pass  # the run moved on meanwhile (a cancel, a timer): the outcome stands all the same
        return await self._store.append_unguarded(event)

    async def cancelled(self, cmd: ExecuteStep, after_seq: int) -> bool:
        subject = s.event_subject(cmd.workflow, cmd.run_id, s.ROUTER, "run_cancelled")
        return bool(await self._store.read(subject, after_seq=after_seq))


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
