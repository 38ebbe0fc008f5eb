"""The workflow language: one pydantic model per step kind, a `Workflow` that checks its graph.

Every model forbids unknown fields, so a typo is an error rather than a silently ignored setting, and
validates strictly (`end: "yes"` or `version: "2"` are errors, not coerced).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import Draft202012Validator, validator_for  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    model_validator,
)

from .conditions import ChoiceRule
from .errors import Loc, raise_problems
from .patterns import NAME_PATTERN, RESULT_PATH_PATTERN, TOOL_PATTERN
from .retry import Catcher, Retrier
from .templating import CONTEXT_ROOTS, RUN_KEYS, TemplateSyntaxError, string_references, template_strings

#: Letters, digits, '_' and '-': safe as a NATS subject token and in a file name.
Token = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=64)]
ToolName = Annotated[str, StringConstraints(pattern=TOOL_PATTERN, max_length=128)]
#: Where a result goes in run data. Only `steps` and `errors` are writable: `input`, `run` and `human`
#: are what the run was given and must not be overwritten by a step.
ResultPath = Annotated[str, StringConstraints(pattern=RESULT_PATH_PATTERN)]

SideEffect = Literal["read", "write"]
Risk = Literal["low", "medium", "high"]
#: Kinds of action a policy can gate: moves money, changes access, deletes or bulk-edits, sends to a
#: customer, touches production.
ActionClass = Literal["money", "access", "delete", "customer", "production"]
ACTION_CLASSES: tuple[str, ...] = get_args(ActionClass)

#: Keys of `attempt` in the context of a `verify` call's input.
ATTEMPT_KEYS = ("request", "idempotency_key", "number")

MAX_STEPS = 500
MAX_WAIT_SECONDS = 366 * 24 * 3600
MAX_EXPIRY_SECONDS = 90 * 24 * 3600


def _check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from exc
    return schema


JsonSchema = Annotated[dict[str, Any], AfterValidator(_check_json_schema)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VerifyCall(_Model):
    """The read-back used after `unknown_outcome`: did the write land?"""

    tool: ToolName
    input: Any = Field(
        default_factory=dict,
        description="Template; may also use ${attempt.request}, ${attempt.idempotency_key} and ${attempt.number}",
    )


class _Step(_Model):
    id: Token
    description: str | None = None

    @model_validator(mode="after")
    def _local_checks(self) -> _Step:
        problems = list(self.local_problems())
        if problems:
            raise_problems(problems)
        return self

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        """Mistakes visible within the step alone."""
        return iter(())

    def targets(self) -> Iterator[tuple[Loc, str]]:
        """Step ids this step names explicitly, with where it names them."""
        return iter(())

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        """Templates in this step, with their location and any extra context roots they may use."""
        return iter(())

    def writes(self) -> list[str]:
        """Result paths this step can write into run data."""
        return []


class _Continuing(_Step):
    next: Token | None = Field(None, description="Step to run next; default the following step in the list")
    end: bool = Field(False, description="End the run successfully after this step")

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        yield from super().local_problems()
        if self.end and self.next is not None:
            yield ("end",), "end: true cannot be combined with next"

    def targets(self) -> Iterator[tuple[Loc, str]]:
        if self.next is not None:
            yield ("next",), self.next


def _ordered_error_lists(field: str, entries: Sequence[Retrier | Catcher]) -> Iterator[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    for k, entry in enumerate(entries):
        if "all" in entry.error_equals and k != len(entries) - 1:
            yield (field, k, "error_equals"), f"a {field} entry matching 'all' must be the last one"
        for cls in entry.error_equals:
            if cls in seen and cls != "all":
                yield (
                    (field, k, "error_equals"),
                    f"'{cls}' is already matched by {field}[{seen[cls]}], so this entry never applies to it",
                )
            seen.setdefault(cls, k)


class ToolStep(_Continuing):
    """Call an adapter with an input templated from run data."""

    kind: Literal["tool"]
    tool: ToolName = Field(description="Adapter and operation, e.g. billing.refund")
    input: Any = Field(default_factory=dict, description="Template rendered against run data")
    side_effect: SideEffect = "read"
    risk: Risk = "low"
    action_class: list[ActionClass] = Field(default_factory=list, description="What the write does")
    timeout_seconds: float = Field(30.0, gt=0, le=24 * 3600)
    idempotency_key: str | None = Field(
        None, description="Template; default derived by the executor from run, step and intent"
    )
    verify: VerifyCall | None = None
    retry: list[Retrier] = Field(default_factory=list)
    catch: list[Catcher] = Field(default_factory=list)
    result_path: ResultPath | None = Field(None, description="Default steps.<id>")

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        yield from super().local_problems()
        if self.action_class and self.side_effect == "read":
            yield (
                ("action_class",),
                "action classes mark writes, but this step says side_effect: read "
                "(a mislabelled write would skip approval and be retried blindly)",
            )
        dupes = sorted({c for c in self.action_class if self.action_class.count(c) > 1})
        if dupes:
            yield ("action_class",), f"listed more than once: {', '.join(dupes)}"
        yield from _ordered_error_lists("retry", self.retry)
        yield from _ordered_error_lists("catch", self.catch)
        if self.side_effect == "write" and self.verify is None:
            for k, retrier in enumerate(self.retry):
                if retrier.matches("unknown_outcome"):
                    via = "'all' includes unknown_outcome; list the classes to retry instead, or add verify"
                    if "unknown_outcome" in retrier.error_equals:
                        via = "add verify (the read-back that tells whether the write landed)"
                    yield (
                        ("retry", k, "error_equals"),
                        f"a write without verify must not retry unknown_outcome blindly: {via}",
                    )

    def targets(self) -> Iterator[tuple[Loc, str]]:
        yield from super().targets()
        for k, catcher in enumerate(self.catch):
            yield ("catch", k, "next"), catcher.next

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        yield ("input",), self.input, frozenset()
        if self.idempotency_key is not None:
            yield ("idempotency_key",), self.idempotency_key, frozenset()
        if self.verify is not None:
            yield ("verify", "input"), self.verify.input, frozenset({"attempt"})
        for k, catcher in enumerate(self.catch):
            if catcher.has_fallback_result:
                yield ("catch", k, "fallback_result"), catcher.fallback_result, frozenset()

    @property
    def output_path(self) -> str:
        return self.result_path or f"steps.{self.id}"

    def writes(self) -> list[str]:
        return [self.output_path, *(c.error_path(self.id) for c in self.catch)]


class DecideOption(_Model):
    intent: Token
    description: str | None = None
    payload_schema: JsonSchema = Field(
        default_factory=lambda: {"type": "object"}, description="JSON Schema the decider's payload must match"
    )
    next: Token | None = Field(None, description="Step for this intent; default the decide step's next")


class DecideStep(_Continuing):
    """Ask a decider for one of the declared intents, with a payload valid for that intent.

    The result stored at result_path is {"intent", "payload", "confidence"}.
    """

    kind: Literal["decide"]
    decider: ToolName = Field(description="Decider adapter, e.g. llm.triage")
    input: Any = Field(default_factory=dict, description="Template: what the decider is shown")
    options: list[DecideOption] = Field(min_length=1)
    min_confidence: float | None = Field(None, ge=0, le=1, description="Below this the decider is unsure")
    result_path: ResultPath | None = None

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        yield from super().local_problems()
        first: dict[str, int] = {}
        for k, option in enumerate(self.options):
            if option.intent in first:
                yield ("options", k, "intent"), f"duplicate intent (also options[{first[option.intent]}])"
            first.setdefault(option.intent, k)

    def targets(self) -> Iterator[tuple[Loc, str]]:
        yield from super().targets()
        for k, option in enumerate(self.options):
            if option.next is not None:
                yield ("options", k, "next"), option.next

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        yield ("input",), self.input, frozenset()

    def option(self, intent: str) -> DecideOption | None:
        return next((o for o in self.options if o.intent == intent), None)

    @property
    def output_path(self) -> str:
        return self.result_path or f"steps.{self.id}"

    def writes(self) -> list[str]:
        return [self.output_path]


class ChoiceStep(_Step):
    """Branch on run data: the first rule that holds picks the next step, else `default`."""

    kind: Literal["choice"]
    choices: list[ChoiceRule] = Field(min_length=1)
    default: Token = Field(description="Step when no rule holds (required: every branch is explicit)")

    def targets(self) -> Iterator[tuple[Loc, str]]:
        for k, rule in enumerate(self.choices):
            yield ("choices", k, "next"), rule.next
        yield ("default",), self.default


class ApprovalStep(_Continuing):
    """Gate a write: request approval of the exact payload of step `approves` and park the run.

    Approved -> next; rejected -> on_reject (default: the run fails); expired -> escalate_to.
    The result stored at result_path describes the decision.
    """

    kind: Literal["approval"]
    role: Token = Field(description="Role an approver must hold")
    approves: Token = Field(description="The write step whose exact payload this approval unlocks")
    summary: str | None = Field(None, description="Template: why this is asked, shown to the approver")
    expires_after_seconds: int = Field(24 * 3600, gt=0, le=MAX_EXPIRY_SECONDS)
    escalate_to: Token = Field(description="Step to go to when the request expires undecided")
    on_reject: Token | None = Field(None, description="Step on rejection; default: the run fails")
    result_path: ResultPath | None = None

    def targets(self) -> Iterator[tuple[Loc, str]]:
        yield from super().targets()
        yield ("approves",), self.approves
        yield ("escalate_to",), self.escalate_to
        if self.on_reject is not None:
            yield ("on_reject",), self.on_reject

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        if self.summary is not None:
            yield ("summary",), self.summary, frozenset()

    @property
    def output_path(self) -> str:
        return self.result_path or f"steps.{self.id}"

    def writes(self) -> list[str]:
        return [self.output_path]


class HumanStep(_Continuing):
    """Park the run in a human-owned queue; continue with the input once it validates."""

    kind: Literal["human"]
    queue: Token = Field(description="Human-owned queue (team or role) the task lands in")
    prompt: str = Field(description="Template: what the human is asked; the full run context is shown too")
    input_schema: JsonSchema = Field(default_factory=lambda: {"type": "object"})
    expires_after_seconds: int | None = Field(None, gt=0, le=MAX_EXPIRY_SECONDS)
    escalate_to: Token | None = Field(None, description="Step when no input arrives in time")
    result_path: ResultPath | None = None

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        yield from super().local_problems()
        if (self.expires_after_seconds is None) != (self.escalate_to is None):
            yield (), "expires_after_seconds and escalate_to go together"

    def targets(self) -> Iterator[tuple[Loc, str]]:
        yield from super().targets()
        if self.escalate_to is not None:
            yield ("escalate_to",), self.escalate_to

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        yield ("prompt",), self.prompt, frozenset()

    @property
    def output_path(self) -> str:
        return self.result_path or f"steps.{self.id}"

    def writes(self) -> list[str]:
        return [self.output_path]


class WaitStep(_Continuing):
    """A durable timer: `seconds`, or `until` a timestamp (ISO 8601 with offset) from run data."""

    kind: Literal["wait"]
    seconds: float | None = Field(None, gt=0, le=MAX_WAIT_SECONDS)
    until: str | None = Field(None, description="Template resolving to an ISO 8601 timestamp")

    def local_problems(self) -> Iterator[tuple[Loc, str]]:
        yield from super().local_problems()
        if (self.seconds is None) == (self.until is None):
            yield (), "a wait needs exactly one of seconds or until"

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        if self.until is not None:
            yield ("until",), self.until, frozenset()


class SucceedStep(_Step):
    kind: Literal["succeed"]
    output: Any = Field(None, description="Template: the run's result")

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        if "output" in self.model_fields_set:
            yield ("output",), self.output, frozenset()


class FailStep(_Step):
    kind: Literal["fail"]
    error: Token = Field("failed", description="Error code recorded on the run")
    cause: str | None = Field(None, description="Template: human-readable cause")

    def templates(self) -> Iterator[tuple[Loc, Any, frozenset[str]]]:
        if self.cause is not None:
            yield ("cause",), self.cause, frozenset()


Step = Annotated[
    ToolStep | DecideStep | ChoiceStep | ApprovalStep | HumanStep | WaitStep | SucceedStep | FailStep,
    Field(discriminator="kind"),
]
ContinuingStep = ToolStep | DecideStep | ApprovalStep | HumanStep | WaitStep


class Workflow(_Model):
    """A workflow file. Load it with `loader.load_workflow` to get file:line locations on mistakes."""

    name: Token = Field(description="Unique workflow name (a NATS subject token)")
    version: int = Field(1, ge=1)
    description: str | None = None
    input_schema: JsonSchema | None = Field(None, description="JSON Schema of the trigger input")
    start_at: Token | None = Field(None, description="First step; default the first in the list")
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    _by_id: dict[str, Step] = PrivateAttr(default_factory=dict)
    _index: dict[str, int] = PrivateAttr(default_factory=dict)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_graph(self) -> Workflow:
        problems = _graph_problems(self)
        if problems:
            raise_problems(problems)
        self._index = {s.id: i for i, s in enumerate(self.steps)}
        self._by_id = {s.id: s for s in self.steps}
        return self

    # --- navigation for the router -------------------------------------------------------------------

    @property
    def start_step_id(self) -> str:
        return self.start_at or self.steps[0].id

    @property
    def source(self) -> Path | None:
        """The file this workflow was loaded from, if any."""
        return self._source

    def step(self, step_id: str) -> Step:
        try:
            return self._by_id[step_id]
        except KeyError:
            raise KeyError(f"workflow {self.name} has no step {step_id!r}") from None

    def next_of(self, step: ContinuingStep, intent: str | None = None) -> str | None:
        """Step after `step` completes normally; None means the run ends successfully.

        For a decide step, pass the accepted intent: an option's own `next` wins.
        """
        if isinstance(step, DecideStep) and intent is not None:
            option = step.option(intent)
            if option is not None and option.next is not None:
                return option.next
        return _default_next(self.steps, self._index[step.id], step)

    def approvals_for(self, step_id: str) -> list[ApprovalStep]:
        """Approval steps in this workflow that gate the write step `step_id`."""
        return [s for s in self.steps if isinstance(s, ApprovalStep) and s.approves == step_id]

    def digest(self) -> str:
        """sha256 of the canonical JSON of the validated definition: which exact workflow a run followed."""
        canonical = json.dumps(
            self.model_dump(mode="json", by_alias=True),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def _default_next(steps: list[Step], index: int, step: ContinuingStep) -> str | None:
    if step.next is not None:
        return step.next
    if step.end or index + 1 >= len(steps):
        return None
    return steps[index + 1].id


def _edges(steps: list[Step], index: int) -> list[str]:
    step = steps[index]
    out: list[str] = []
    if isinstance(step, ToolStep | DecideStep | ApprovalStep | HumanStep | WaitStep):
        nxt = _default_next(steps, index, step)
        if nxt is not None:
            out.append(nxt)
    out.extend(target for loc, target in step.targets() if loc[0] != "approves")
    return out


def _reach(start: str, graph: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in graph.get(node, []):
            if succ not in seen:
                seen.add(succ)
                queue.append(succ)
    return seen


def _suggest(word: str, options: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _graph_problems(wf: Workflow) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.id in first:
            problems.append((("steps", i, "id"), f"duplicate step id '{step.id}' (also steps[{first[step.id]}])"))
        first.setdefault(step.id, i)
    known = set(first)
    if wf.start_at is not None and wf.start_at not in known:
        problems.append((("start_at",), f"unknown step '{wf.start_at}'{_suggest(wf.start_at, known)}"))
    for i, step in enumerate(wf.steps):
        for loc, target in step.targets():
            if target not in known:
                problems.append((("steps", i, *loc), f"unknown step '{target}'{_suggest(target, known)}"))
    if problems:
        # The checks below walk the graph and would only repeat these mistakes in other words.
        return problems

    by_id = {s.id: s for s in wf.steps}
    graph = {s.id: _edges(wf.steps, i) for i, s in enumerate(wf.steps)}
    start = wf.start_at or wf.steps[0].id
    reachable = _reach(start, graph) | {start}
    for i, step in enumerate(wf.steps):
        if step.id not in reachable:
            problems.append((("steps", i), f"step '{step.id}' is unreachable from the start step '{start}'"))

    for i, step in enumerate(wf.steps):
        if isinstance(step, ApprovalStep):
            gated = by_id[step.approves]
            if not (isinstance(gated, ToolStep) and gated.side_effect == "write"):
                problems.append((("steps", i, "approves"), f"'{step.approves}' is not a write tool step"))
                continue
            for field in ("escalate_to", "on_reject"):
                if getattr(step, field) == step.approves:
                    problems.append(
                        (("steps", i, field), f"must not go to '{step.approves}', the write this step gates")
                    )
            if step.approves not in _reach(step.id, graph):
                problems.append((("steps", i, "approves"), f"'{step.approves}' cannot run after this approval"))

    reverse: dict[str, list[str]] = {s.id: [] for s in wf.steps}
    for src, dsts in graph.items():
        for dst in dsts:
            reverse[dst].append(src)
    for i, step in enumerate(wf.steps):
        before = _reach(step.id, reverse)
        writes = [w.split(".") for sid in before for w in by_id[sid].writes()]
        human_before = any(isinstance(by_id[sid], HumanStep) for sid in before)
        refs: list[tuple[Loc, str, frozenset[str]]] = []
        for loc, template, extra in step.templates():
            for sub, text in template_strings(template):
                try:
                    refs.extend(((*loc, *sub), ref, extra) for ref in string_references(text))
                except TemplateSyntaxError as exc:
                    problems.append((("steps", i, *loc, *sub), str(exc)))
        if isinstance(step, ChoiceStep):
            for k, rule in enumerate(step.choices):
                refs.extend((("choices", k), ref, frozenset()) for ref in sorted(rule.variables()))
        for loc, ref, extra in refs:
            why = _reference_problem(ref, extra, writes, human_before, by_id)
            if why:
                problems.append((("steps", i, *loc), why))
    return problems


def _reference_problem(
    ref: str, extra: frozenset[str], writes: list[list[str]], human_before: bool, by_id: Mapping[str, Step]
) -> str | None:
    segs = ref.split(".")
    root = segs[0]
    if root in extra:
        if root == "attempt" and len(segs) > 1 and segs[1] not in ATTEMPT_KEYS:
            return f"'{ref}': attempt has only {', '.join(ATTEMPT_KEYS)}"
        return None
    if root not in CONTEXT_ROOTS:
        roots = (*CONTEXT_ROOTS, *sorted(extra))
        return f"'{ref}': unknown root '{root}' (expected one of {', '.join(roots)}){_suggest(root, set(roots))}"
    if root == "run" and len(segs) > 1 and segs[1] not in RUN_KEYS:
        return f"'{ref}': run has only {', '.join(RUN_KEYS)}"
    if root == "human" and not human_before:
        return f"'{ref}': no human step can run before this step"
    if root in ("steps", "errors") and len(segs) > 1:
        n = len(segs)
        if any(w[: min(n, len(w))] == segs[: min(n, len(w))] for w in writes):
            return None
        if root == "steps" and segs[1] in by_id:
            target = by_id[segs[1]]
            if not target.writes():
                return f"'{ref}': step '{segs[1]}' ({target.kind}) produces no result"
            return f"'{ref}': step '{segs[1]}' cannot run before this step"
        return f"'{ref}': no step that can run before this one writes '{root}.{segs[1]}'"
    return None
