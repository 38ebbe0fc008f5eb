"""Running one attempt of one step: claim, call the tool, report the outcome. No broker in here.

Order matters for exactly-once effects:
1. claim the attempt's dedupe key (the `command_id` of its `step_scheduled` event);
2. if it had been claimed before, look for the outcome recorded under its dedupe key: found means the
   attempt finished (its ack was lost) and nothing is done; not found means the holder died mid-call,
   so the tool runs again with the *same* idempotency key and the system of record collapses the two
   calls into one write (a write with a read-back is verified first: see verification.py);
3. for a write, look for the run's cancellation since the step was scheduled: a cancelled run starts
   no new write (decision 023);
4. record the outcome event (deduplicated by the server on `<dedupe_key>:outcome`), checked to follow
   the `step_scheduled` event directly when nothing else was stored on the run in between, which lets
   the router fold it in without reading the run.
A crash between any two of these repeats only steps that are safe to repeat. The outcome event is the
record of completion: the claim is not written again (decision 008).

A read (`side_effect: read`, the default) changes nothing in the system it calls, so on its first
delivery it runs without a claim: running it twice is harmless and its outcome is deduplicated. A
redelivered read claims and looks for its outcome first, like a write, so a finished attempt whose ack
was lost is reported, not run again.
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
from keel_contracts.errors import ErrorClass
from keel_contracts.events import StepFailed, StepFailedBody, StepSucceeded, StepSucceededBody
from keel_executor.claims import Claims, ClaimState
from keel_executor.errors import RefusedError, StepTimeoutError, ToolError, classify
from keel_executor.tools.registry import Tool, ToolContext, ToolRegistry
from keel_executor.verification import ReadBack, resolve_unknown, verify_before_resending
from keel_shared.decisions import grant_problem
from keel_shared.keyrings import Verifier
from keel_shared.logging import get_logger
from keel_shared.metrics import UNVERIFIED_DECISIONS

log = get_logger(__name__)


class Outcomes(Protocol):
    """The run's event stream as the executor sees it."""

    async def find(self, cmd: ExecuteStep) -> int | None:
        """The stream sequence of an outcome already recorded for this attempt, if any."""

    async def record(self, event: Message, follows_seq: int | None = None) -> int:
        """Store an outcome; with `follows_seq`, checked to be the run's next event after that sequence
        when it is (stored without the check when it is not). Returns its stream sequence."""

    async def cancelled(self, cmd: ExecuteStep, after_seq: int) -> bool:
        """Whether the run was cancelled after the given stream sequence."""


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Message | None  # None when the attempt had already finished, or its run was cancelled
    outcome_seq: int | None
    claim_state: ClaimState | None  # None: a read on its first delivery, which takes no claim


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
        keyring: Verifier,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._tools = tools
        self._keyring = keyring
        self._claims = claims
        self._outcomes = outcomes
        self._id = executor_id
        self._data_dir = data_dir
        self._clock = clock

    async def execute(
        self,
        cmd: ExecuteStep,
        scheduled_seq: int | None = None,
        first_delivery: bool = False,
        distrust: str | None = None,
    ) -> ExecutionResult:
        """Run the attempt `cmd` (see the module docstring). `scheduled_seq` is the stream sequence of
        its `step_scheduled` event; `first_delivery` says the attempt was never handed out before;
        `distrust`, why its schedule is not the router's (decision 026): then a write is refused, its
        refusal recorded as the attempt's outcome, and the tool never called."""
        write = cmd.body.side_effect == "write"
        state: ClaimState | None = None
        if write or not first_delivery:
            claim = await self._claims.claim(cmd.dedupe_key, self._id)
            state = claim.state
            # A read took no claim the first time, so even a new claim may follow a finished attempt.
            if state is ClaimState.TAKEN_OVER or not write:
                seq = await self._outcomes.find(cmd)
                if seq is not None:
                    log.info("already_done", run_id=cmd.run_id, step_id=cmd.step_id, attempt=cmd.attempt, seq=seq)
                    return ExecutionResult(None, seq, state)
            if state is ClaimState.TAKEN_OVER:
                log.warning("claim_taken_over", run_id=cmd.run_id, step_id=cmd.step_id, previous=claim.previous_holder)
        if write and scheduled_seq is not None and await self._outcomes.cancelled(cmd, scheduled_seq):
            log.info("write_not_started_run_cancelled", run_id=cmd.run_id, step_id=cmd.step_id, attempt=cmd.attempt)
            return ExecutionResult(None, None, state)
        outcome = await self._run_tool(cmd, taken_over=state is ClaimState.TAKEN_OVER, distrust=distrust)
        seq = await self._outcomes.record(outcome, scheduled_seq)
        return ExecutionResult(outcome, seq, state)

    def _check_grants(self, cmd: ExecuteStep) -> None:
        """Refuse a gated write unless the payload about to be sent is the one approved and every approval
        it names comes with the approval service's signed grant of exactly this write (decision 026): a
        scheduled step that claims an approval proves it, whoever stored it."""
        body = cmd.body
        actual = payload_hash(dict(body.input))
        if body.approved_payload_hash is not None and actual != body.approved_payload_hash:
            raise RefusedError(
                f"payload hash {actual} differs from the approved {body.approved_payload_hash} "
                f"(approval {body.approval_id}): a changed payload needs a new approval"
            )
        if body.approved_payload_hash is None or not body.approval_ids:
            raise RefusedError("a gated write must name its approvals and the approved payload: nothing unlocks it")
        proofs = {proof.approval_id: proof for proof in body.grants}
        for approval_id in body.approval_ids:
            proof = proofs.get(approval_id)
            problem = (
                "no signed grant came with it"
                if proof is None
                else grant_problem(self._keyring, proof, cmd.run_id, cmd.step_id, actual)
            )
            if problem is not None:
                UNVERIFIED_DECISIONS.labels(s.EXECUTOR).inc()
                raise RefusedError(f"approval {approval_id} does not unlock this write: {problem}")

    async def _call(
        self, cmd: ExecuteStep, tool: Tool, ctx: ToolContext, data: dict[str, JsonValue], name: str
    ) -> dict[str, JsonValue]:
        """One call of a tool (the write, or a read-back) under the step's timeout."""
        body = cmd.body
        deadline = asyncio.timeout(body.timeout_seconds)
        try:
            async with deadline:
                output: dict[str, JsonValue] = await tool(ctx, dict(data))
        except TimeoutError:
            if not deadline.expired():
                raise  # the tool's own timeout (say, an HTTP read): keep its message and type
            raise StepTimeoutError(f"{name} did not finish within {body.timeout_seconds}s") from None
        if not isinstance(output, dict):
            raise ToolError(f"{name} returned {type(output).__name__}, not an object")
        return output

    async def _run_tool(self, cmd: ExecuteStep, taken_over: bool = False, distrust: str | None = None) -> Message:
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
            if distrust is not None and body.side_effect == "write":
                raise RefusedError(f"this write was not scheduled by the router: {distrust}")
            if body.approved_payload_hash is not None or body.approval_ids:
                self._check_grants(cmd)
            tool = self._tools.get(body.tool)
            data = dict(body.input)
            read_back = ReadBack.for_step(body.verify, tool, body.tool, data, self._tools)

            async def call(fn: Tool, given: dict[str, JsonValue]) -> dict[str, JsonValue]:
                name = body.tool if fn is tool else (read_back.name if read_back else body.tool)
                return await self._call(cmd, fn, ctx, given, name)

            output: dict[str, JsonValue] | None = None
            if taken_over and body.side_effect == "write" and read_back is not None:
                # The previous holder died mid-call: whether its write landed is unknown, so look first.
                output = await verify_before_resending(read_back, call)
            if output is None:
                try:
                    output = await call(tool, data)
                except Exception as exc:
                    if classify(exc) is not ErrorClass.UNKNOWN_OUTCOME or read_back is None:
                        raise
                    output = await resolve_unknown(exc, tool, data, read_back, call, ctx)
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
                    retry_after_seconds=exc.retry_after if isinstance(exc, ToolError) else None,
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
