"""A tool output too large for the event stream is recorded as a permanent failure saying so, instead of a
success the stream refuses for ever (which would leave the run waiting for an outcome)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from nats.js.errors import BadRequestError

from keel_contracts.codec import encode
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepSucceeded, StepSucceededBody
from keel_executor.outcomes import StreamOutcomes

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class SmallStream:
    """Stores what fits in `max_bytes`, refuses the rest as JetStream does (err_code 10054)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stored: list[Message] = []

    async def append_unguarded(self, message: Message) -> int:
        if len(encode(message)) > self.max_bytes:
            raise BadRequestError(code=400, err_code=10054, description="message size exceeds maximum allowed")
        self.stored.append(message)
        return len(self.stored)

    async def read(self, subject_filter: str, after_seq: int = 0, batch: int = 256) -> Sequence[object]:
        return []


def success(output_bytes: int) -> StepSucceeded:
    return StepSucceeded(
        run_id="r1",
        workflow="wf",
        step_id="fetch",
        attempt=1,
        correlation_id="c1",
        causation_id="cmd-1",
        actor="executor:x",
        dedupe_key="r1.fetch.1.1:outcome",
        body=StepSucceededBody(
            tool="http.get", output={"blob": "x" * output_bytes}, started_at=T0, finished_at=T0, executor_id="x"
        ),
    )


async def test_an_output_the_stream_refuses_is_recorded_as_a_permanent_failure_naming_the_limit() -> None:
    stream = SmallStream(4096)
    await StreamOutcomes(stream).record(success(10_000))  # type: ignore[arg-type]

    [failed] = stream.stored
    assert isinstance(failed, StepFailed) and failed.body.error_class is ErrorClass.PERMANENT
    assert failed.body.error_type == "OutputTooLarge" and "KEEL_MAX_MESSAGE_BYTES" in failed.body.message
    assert (failed.dedupe_key, failed.step_id, failed.attempt) == ("r1.fetch.1.1:outcome", "fetch", 1)


async def test_an_output_that_fits_is_recorded_as_it_is_and_other_refusals_are_not_hidden() -> None:
    stream = SmallStream(4096)
    await StreamOutcomes(stream).record(success(100))  # type: ignore[arg-type]
    assert isinstance(stream.stored[0], StepSucceeded)

    class Broken(SmallStream):
        async def append_unguarded(self, message: Message) -> int:
            raise BadRequestError(code=400, err_code=10071, description="wrong last sequence")

    with pytest.raises(BadRequestError):
        await StreamOutcomes(Broken(4096)).record(success(100))  # type: ignore[arg-type]
