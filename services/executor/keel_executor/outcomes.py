"""Where attempt outcomes go: the run's event stream, appended without a sequence check.

An outcome is a fact about an attempt that stands whatever else the run did meanwhile, so it must not
lose a race with the router; its dedupe key keeps a repeated report to one stored event.
"""

from keel_contracts import subjects as s
from keel_contracts.codec import ContractViolation, decode_event
from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_executor.execution import outcome_key
from keel_shared.eventstore import EventStore


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
        return await self._store.append_unguarded(event)
