"""Running one attempt of one step: claim, call the tool, report the outcome. No broker in here.

Order matters for exactly-once effects:
1. claim the command's dedupe key (a finished claim means the work is done: stop);
2. if the claim was taken over from a holder that died, look for the outcome it may have recorded
   before dying, and only if there is none, run the tool again with the *same* idempotency key, so
   the system of record collapses the two calls into one write;
3. record the outcome event (deduplicated by the server on `<dedupe_key>:outcome`);
4. mark the claim done.
A crash between any two of these repeats only steps that are safe to repeat.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.approvals import payload_hash
from keel_contracts.commands import ExecuteStep
from keel_contracts.envelope import Message
from keel_contracts.events import StepFailed, StepFailedBody, StepSucceeded, StepSucceededBody
from keel_executor.claims import Claims, ClaimState
from keel_executor.errors import RefusedError, StepTimeoutError, ToolError, classify
from keel_executor.tools.registry import ToolContext, ToolRegistry
from keel_shared.logging import get_logger

log = get_logger(__name__)


class Outcomes(Protocol):
    async def find(self, cmd: ExecuteStep) -> int | None:
        """The stream sequence of an outcome already recorded for this command, if any."""

    async def record(self, event: Message) -> int: ...


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Message | None  # None when the attempt had already finished before this delivery
    outcome_seq: int | None
    claim_state: ClaimState


def outcome_key(cmd: ExecuteStep) -> str:
    return f"{cmd.dedupe_key}:outcome"


def _envelope(cmd: ExecuteStep, executor_id: str) -> dict[str, Any]:
    return {
        "run_id": cmd.run_id,
        "workflow": cmd.workflow,
        "step_id": cmd.step_id,
        "attempt": cmd.attempt,
        "correlation_id": cmd.correlation_id,
        "causation_id": cmd.id,
        "actor": f"{s.EXECUTOR}:{executor_id}",
        "tenant": cmd.tenant,
        "dedupe_key": outcome_key(cmd),
    }


class Executor:
    def __init__(
        self,
        tools: ToolRegistry,
        claims: Claims,
        outcomes: Outcomes,
        executor_id: str,
        data_dir: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._tools = tools
        self._claims = claims
        self._outcomes = outcomes
        self._id = executor_id
        self._data_dir = data_dir
        self._clock = clock

    async def execute(self, cmd: ExecuteStep) -> ExecutionResult:
        claim = await self._claims.claim(cmd.dedupe_key, self._id)
        if claim.state is ClaimState.DONE:
            log.info("already_done", run_id=cmd.run_id, step_id=cmd.step_id, attempt=cmd.attempt)
            return ExecutionResult(None, None, claim.state)
        if claim.state is ClaimState.TAKEN_OVER:
            log.warning("claim_taken_over", run_id=cmd.run_id, step_id=cmd.step_id, previous=claim.previous_holder)
            seq = await self._outcomes.find(cmd)
            if seq is not None:
                await self._claims.complete(claim, self._id, seq)
                return ExecutionResult(None, seq, claim.state)
        outcome = await self._run_tool(cmd)
        seq = await self._outcomes.record(outcome)
        await self._claims.complete(claim, self._id, seq)
        return ExecutionResult(outcome, seq, claim.state)

    async def _run_tool(self, cmd: ExecuteStep) -> Message:
        body = cmd.body
        started = self._clock()
        ctx = ToolContext(
            run_id=cmd.run_id,
            workflow=cmd.workflow,
            step_id=cmd.step_id or "",
            attempt=cmd.attempt,
            tenant=cmd.tenant,
            correlation_id=cmd.correlation_id,
            idempotency_key=body.idempotency_key,
            timeout_seconds=body.timeout_seconds,
            data_dir=self._data_dir,
        )
        try:
            if body.approved_payload_hash is not None:
                actual = payload_hash(dict(body.input))
                if actual != body.approved_payload_hash:
                    raise RefusedError(
                        f"payload hash {actual} differs from the approved {body.approved_payload_hash} "
                        f"(approval {body.approval_id}): a changed payload needs a new approval"
                    )
            tool = self._tools.get(body.tool)
            deadline = asyncio.timeout(body.timeout_seconds)
            try:
                async with deadline:
                    output: dict[str, JsonValue] = await tool(ctx, dict(body.input))
            except TimeoutError:
                if not deadline.expired():
                    raise  # the tool's own timeout (say, an HTTP read): keep its message and type
                raise StepTimeoutError(f"{body.tool} did not finish within {body.timeout_seconds}s") from None
            if not isinstance(output, dict):
                raise ToolError(f"{body.tool} returned {type(output).__name__}, not an object")
        except Exception as exc:  # every failure of a tool becomes an event, never a crash
            error_class = classify(exc)
            log.info("step_failed", tool=body.tool, error_class=str(error_class), error=str(exc)[:500])
            return StepFailed(
                **_envelope(cmd, self._id),
                body=StepFailedBody(
                    tool=body.tool,
                    error_class=error_class,
                    error_type=type(exc).__name__,
                    message=str(exc)[:4096],
                    started_at=started,
                    finished_at=self._clock(),
                    executor_id=self._id,
                ),
            )
        return StepSucceeded(
            **_envelope(cmd, self._id),
            body=StepSucceededBody(
                tool=body.tool,
                output=output,
                started_at=started,
                finished_at=self._clock(),
                executor_id=self._id,
            ),
        )
