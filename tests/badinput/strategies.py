"""Hypothesis strategies for hostile input, shared by every bad-input test.

- text and JSON values: unicode edge cases (NUL, RTL overrides, zero-width and non-characters, combining
  marks, astral planes), markup, path traversal and template syntax that the router's templating (or any
  engine behind a tool) might evaluate;
- `garbage(target)`: a message for one consumed subject that its contract refuses, made from a valid one
  by one mutation (a field dropped, a wrong type or version, a foreign `type`, a hostile token, a string
  over the services' size limit, nesting deeper than any parser allows) or by breaking its bytes (cut
  short, invalid UTF-8, lone surrogate escapes, raw control characters, NaN, huge numbers, binary noise);
- `hostile_trigger_input` / `hostile_intent_key`: valid triggers with hostile content, which must run
  with the content kept as inert data;
- HTTP parts: path segments, query strings, headers and bodies.

A generated refusal is only kept when the contract (pydantic on the raw bytes) really refuses it, so a
test can demand a dead letter for every one of them. `draw_many` runs a strategy for a batch of examples:
the tests throw them at a real broker in bulk and then check what became of each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from keel_approval.timers import ApprovalExpiryDue, ExpiryBody
from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts import topology
from keel_contracts.approvals import (
    ApprovalDecisionBody,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalExpiredBody,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalRequestedBody,
    ApprovalTarget,
    ApprovalWithdrawn,
    ApprovalWithdrawnBody,
    payload_hash,
)
from keel_contracts.commands import (
    CancelRun,
    CancelRunBody,
    HumanInput,
    HumanInputBody,
    RouterCommand,
    TriggerRun,
)
from keel_contracts.envelope import Message
from keel_contracts.errors import ErrorClass
from keel_contracts.events import (
    RunEvent,
    RunStarted,
    RunStartedBody,
    StepFailed,
    StepFailedBody,
    StepScheduled,
    StepScheduledBody,
    StepSucceeded,
    StepSucceededBody,
)
from keel_contracts.timers import TimerBody, TimerFired
from keel_executor.app import Work
from keel_shared.triggers import build_trigger

T = TypeVar("T")

#: What the bad-input stack's services accept at most (KEEL_MAX_MESSAGE_BYTES); the streams take up to
#: the default 256 KiB, so a message in between reaches a service and must be refused there.
SERVICE_MAX_BYTES = 64 * 1024
STREAM_MAX_BYTES = 256 * 1024

# --- text and JSON ---------------------------------------------------------------------------------------

HOSTILE_FRAGMENTS: tuple[str, ...] = (
    # Template syntax: the router's own `${...}`, and what Jinja, ERB, str.format or a shell would run.
    "${input}",
    "${run.id}",
    "${steps.receive}",
    "$${input}",
    "${",
    "${ input.customer }",
    "${{7*7}}",
    "{{ 7*7 }}",
    "{{ config.__class__.__init__.__globals__ }}",
    "{% for x in range(9) %}x{% endfor %}",
    "#{7*7}",
    "<%= 7*7 %>",
    "%(x)s",
    "{0.__class__}",
    "$(id)",
    "`id`",
    # Markup, injection, traversal.
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "'; DROP TABLE approvals; --",
    "../../../etc/passwd",
    "%00",
    "%2e%2e%2f",
    "\r\nX-Injected: 1",
    # Unicode edge cases.
    "\x00",
    "\u202e",
    "\u202d",
    "\u200b",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u2028",
    "\u2029",
    "\x1b[2J",
    "\U0001f4a5",
    "e\u0301\u0301\u0301",
    "\u0130",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\U00012000",
)

hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=4)), min_size=1, max_size=6).map("".join),
)

json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
)
json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(hostile_text, json_values, max_size=6)

#: Valid triggers with hostile content: the `demo` workflow echoes its input, so the run's output shows
#: whether anything in it was evaluated.
hostile_trigger_input = json_objects
hostile_intent_key: st.SearchStrategy[str] = hostile_text.filter(lambda k: 1 <= len(k) <= 512)

# --- messages for each consumed subject ------------------------------------------------------------------

_TOKENS = st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _envelope(workflow: str, run_id: str, actor: str, key: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "workflow": workflow,
        "step_id": "receive",
        "attempt": 1,
        "correlation_id": f"corr-{run_id}",
        "actor": actor,
        "dedupe_key": key,
    }


def _trigger(workflow: str, run_id: str) -> Message:
    return build_trigger(workflow, {"customer": "ACME"}, f"bad-{run_id}", source="badinput")


def _human_input(workflow: str, run_id: str) -> Message:
    return HumanInput(
        **_envelope(workflow, run_id, "cli:badinput", f"{run_id}:input"),
        body=HumanInputBody(input={"amount": 1}, submitted_by="badinput", step_id="ask"),
    )


def _cancel(workflow: str, run_id: str) -> Message:
    envelope = _envelope(workflow, run_id, "cli:badinput", f"{run_id}:cancel")
    return CancelRun(**envelope, body=CancelRunBody(requested_by="x"))


def _scheduled(workflow: str, run_id: str) -> Message:
    return StepScheduled(
        **_envelope(workflow, run_id, s.ROUTER, f"{run_id}:receive:1:scheduled"),
        body=StepScheduledBody(
            tool="demo.echo",
            input={"x": 1},
            idempotency_key=f"{run_id}-receive",
            command_id=f"{run_id}:receive:1",
            timeout_seconds=5,
            reason="badinput",
        ),
    )


def _started_with_step(workflow: str, run_id: str) -> Message:
    """A run's start carrying its first step (decision 025): the executors' work too."""
    return RunStarted(
        **_envelope(workflow, run_id, s.ROUTER, f"{run_id}:started"),
        body=RunStartedBody(
            intent_key=run_id,
            source="badinput",
            trigger_id=f"t-{run_id}",
            input={},
            first_step=_scheduled(workflow, run_id),
        ),
    )


def _succeeded(workflow: str, run_id: str) -> Message:
    now = _now()
    return StepSucceeded(
        **_envelope(workflow, run_id, "executor:badinput", f"{run_id}:receive:1:outcome"),
        body=StepSucceededBody(tool="demo.echo", output={"x": 1}, started_at=now, finished_at=now, executor_id="e"),
    )


def _failed(workflow: str, run_id: str) -> Message:
    now = _now()
    return StepFailed(
        **_envelope(workflow, run_id, "executor:badinput", f"{run_id}:receive:1:outcome"),
        body=StepFailedBody(
            tool="demo.echo",
            error_class=ErrorClass.TRANSIENT,
            error_type="Boom",
            message="boom",
            started_at=now,
            finished_at=now,
            executor_id="e",
        ),
    )


def _decision(workflow: str, run_id: str) -> Message:
    body = ApprovalDecisionBody(
        approval_id=f"{run_id}:a", payload_hash="sha256:00", decided_by=["x"], roles=["finance"], decided_at=_now()
    )
    return ApprovalGranted(**_envelope(workflow, run_id, s.APPROVAL, f"{run_id}:approval:a:decided"), body=body)


def _denied(workflow: str, run_id: str) -> Message:
    granted = _decision(workflow, run_id)
    assert isinstance(granted, ApprovalGranted)
    return ApprovalDenied(**_envelope(workflow, run_id, s.APPROVAL, granted.dedupe_key), body=granted.body)


def _expired(workflow: str, run_id: str) -> Message:
    return ApprovalExpired(
        **_envelope(workflow, run_id, s.APPROVAL, f"{run_id}:approval:a:decided"),
        body=ApprovalExpiredBody(approval_id=f"{run_id}:a", expired_at=_now()),
    )


def approval_request(workflow: str, run_id: str, **changes: Any) -> ApprovalRequested:
    """A valid approval request (the payload hash matches); `changes` replace body fields."""
    payload = changes.pop("payload", {"charge_id": "ch_1", "amount": 100})
    body = {
        "approval_id": f"{run_id}:approve:1",
        "roles": ["finance"],
        "approves_step": "refund",
        "tool": "demo.ledger",
        "payload": payload,
        "payload_hash": payload_hash(payload),
        "target": ApprovalTarget(system="billing", operation="refund", record="ch_1"),
        "summary": "Refund 1.00",
        "reason": "policy requires approval",
        "requested_by": "agent:badinput",
        "expires_at": _now() + timedelta(hours=1),
        **changes,
    }
    return ApprovalRequested(
        **{**_envelope(workflow, run_id, s.ROUTER, f"{run_id}:approval:{body['approval_id']}:requested")},
        body=ApprovalRequestedBody(**body),
    )


def _withdrawn(workflow: str, run_id: str) -> Message:
    return ApprovalWithdrawn(
        **_envelope(workflow, run_id, s.ROUTER, f"{run_id}:approval:{run_id}:approve:1:withdrawn"),
        body=ApprovalWithdrawnBody(approval_id=f"{run_id}:approve:1", because="run_cancelled", reason="the run ended"),
    )


def _timer(workflow: str, run_id: str) -> Message:
    return TimerFired(
        **_envelope(workflow, run_id, s.ROUTER, f"{run_id}:timer:t1"),
        body=TimerBody(purpose="retry", due_at=_now(), next_attempt=2, timer_id="t1"),
    )


def _expiry(workflow: str, run_id: str) -> Message:
    return ApprovalExpiryDue(
        **_envelope(workflow, run_id, s.APPROVAL, f"{run_id}:approval:k:expiry"),
        body=ExpiryBody(approval_id=f"{run_id}:a", expires_at=_now()),
    )


@dataclass(frozen=True)
class Target:
    """One durable consumer of a Keel service: where its messages go and what a valid one looks like."""

    durable: str
    service: str
    stream: str
    #: Valid messages of each kind the consumer takes, for a workflow and run.
    bases: tuple[Callable[[str, str], Message], ...]
    #: The subject a message is published on.
    subject: Callable[[Message], str]
    #: The contract the consumer binds its messages to (what decides "refused").
    contract: TypeAdapter[Any]

    def refuses(self, data: bytes) -> bool:
        if len(data) > SERVICE_MAX_BYTES:
            return True
        try:
            self.contract.validate_json(data)
        except ValidationError:
            return True
        return False


def _rightful_subject(m: Message) -> str:
    """Where the rightful emitter of the message's type stores it (the topology table)."""
    return topology.subject_of(m)


def _router_command_subject(m: Message) -> str:
    return s.router_cancel_subject(m.run_id) if isinstance(m, CancelRun) else s.router_input_subject(m.run_id)


#: Every durable consumer of every Keel service, by durable name (the inventory test checks it is all).
TARGETS: dict[str, Target] = {
    target.durable: target
    for target in (
        Target(
            s.ROUTER_TRIGGERS_DURABLE,
            s.ROUTER,
            s.COMMANDS_STREAM,
            (_trigger,),
            lambda m: s.trigger_subject("badinput"),
            TypeAdapter(TriggerRun),
        ),
        Target(
            s.ROUTER_COMMANDS_DURABLE,
            s.ROUTER,
            s.COMMANDS_STREAM,
            (_human_input, _cancel),
            _router_command_subject,
            TypeAdapter(RouterCommand),
        ),
        Target(
            s.ROUTER_EVENTS_DURABLE,
            s.ROUTER,
            s.EVENTS_STREAM,
            (_succeeded, _failed, _decision, _denied, _expired),
            _rightful_subject,
            TypeAdapter(RunEvent),
        ),
        Target(
            t.ROUTER_TIMERS_DURABLE,
            s.ROUTER,
            t.TIMERS_STREAM,
            (_timer,),
            lambda m: t.fire_subject(m.workflow, m.run_id, "t1"),
            TypeAdapter(TimerFired),
        ),
        Target(
            s.EXECUTOR_DURABLE,
            s.EXECUTOR,
            s.EVENTS_STREAM,
            (_scheduled, _started_with_step),
            _rightful_subject,
            TypeAdapter(Work),
        ),
        Target(
            s.APPROVAL_REQUESTS_DURABLE,
            s.APPROVAL,
            s.EVENTS_STREAM,
            (approval_request, _withdrawn),
            _rightful_subject,
            TypeAdapter(Annotated[ApprovalRequested | ApprovalWithdrawn, Field(discriminator="type")]),
        ),
        Target(
            t.APPROVAL_TIMERS_DURABLE,
            s.APPROVAL,
            t.TIMERS_STREAM,
            (_expiry,),
            lambda m: t.approval_fire_subject(m.workflow, m.run_id, "k"),
            TypeAdapter(ApprovalExpiryDue),
        ),
    )
}

#: The reasons a refusal may carry: each names what is wrong (never `max_deliveries`, which would mean
#: the message was retried as if the fault were transient).
CLEAR_REASONS = frozenset(
    {
        "malformed_json",
        "invalid",
        "too_large",
        "unknown_type",
        "unknown_workflow",
        "unknown_run",
        "invalid_input",
        # Stored under a subject its type's rightful emitter never uses, or a decision whose signature
        # does not verify (decision 026).
        "wrong_emitter",
        "unverified_decision",
    }
)


@dataclass(frozen=True)
class Garbage:
    """A message a consumer must refuse: where it goes, its bytes and headers, and what was done to it."""

    target: str
    subject: str
    data: bytes
    why: str
    headers: dict[str, str] = field(default_factory=dict)
    #: A field name the refusal's detail must mention (when the refusal is a validation error).
    mentions: str | None = None

    def describe(self) -> str:
        shown = self.data[:200] + (b"..." if len(self.data) > 200 else b"")
        return f"{self.target} {self.subject} [{self.why}] {len(self.data)} bytes {shown!r} headers={self.headers}"


# Mutations of a valid message's JSON document. Each returns (bytes, why, field the detail must name).
Mutation = Callable[[dict[str, Any], type[BaseModel]], st.SearchStrategy[tuple[bytes, str, str | None]]]

_HOLE = "@@hole@@"


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a document (objects only)."""
    out: list[tuple[str, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    return out


def _string_paths(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    return [p for p in _paths(doc) if isinstance(_get(doc, p), str)]


def _get(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    cur = copy
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return copy


def _drop(doc: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    cur = copy
    for key in path[:-1]:
        cur = cur[key]
    del cur[path[-1]]
    return copy


def _required(model: type[BaseModel]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [(n,) for n, f in model.model_fields.items() if f.is_required() or n == "type"]
    body = model.model_fields.get("body")
    if body is not None and isinstance(body.annotation, type) and issubclass(body.annotation, BaseModel):
        paths += [("body", name) for name, f in body.annotation.model_fields.items() if f.is_required()]
    return paths


def _drop_field(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    return st.sampled_from(_required(model)).map(lambda p: (_encode(_drop(doc, p)), f"dropped {'.'.join(p)}", p[-1]))


WRONG_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([[], {}, {"$ne": None}, [[[]]], True, False, None, 0, -1, 1.5, "", "🙃"]),
    hostile_text,
    st.integers(),
    json_values,
)


def _wrong_type(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    def build(path: tuple[str, ...], value: Any) -> tuple[bytes, str, str | None]:
        return _encode(_set(doc, path, value)), f"{'.'.join(path)} = {value!r:.80}", path[-1]

    return st.builds(build, st.sampled_from(_paths(doc)), WRONG_VALUES)


WRONG_VERSIONS: tuple[Any, ...] = (0, -1, 2, 3, 99, 2**64, 1.5, "1.0", "two", None, [], {}, [1])


def _wrong_version(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    return st.sampled_from(WRONG_VERSIONS).map(
        lambda v: (_encode({**doc, "version": v}), f"version = {v!r}", "version")
    )


MESSAGE_TYPES = (
    "trigger_run",
    "execute_step",
    "human_input",
    "cancel_run",
    "timer_fired",
    "approval_expiry_due",
    "run_started",
    "step_succeeded",
    "approval_requested",
    "dead_letter",
)


def _wrong_message_type(
    doc: dict[str, Any], model: type[BaseModel]
) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    return st.one_of(st.sampled_from(MESSAGE_TYPES), hostile_text, WRONG_VALUES).map(
        lambda v: (_encode({**doc, "type": v}), f"type = {v!r:.80}", None)
    )


def _hostile_token(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    fields = [f for f in ("run_id", "workflow", "tenant", "step_id") if f in doc]
    return st.builds(
        lambda f, v: (_encode({**doc, f: v}), f"{f} = {v!r:.80}", f),
        st.sampled_from(fields),
        hostile_text,
    )


def _oversize(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    # Over what the services take, under what the streams store: the service itself must refuse it.
    def build(path: tuple[str, ...], size: int, fill: str) -> tuple[bytes, str, str | None]:
        text = fill * (size // len(fill.encode()))
        return _encode(_set(doc, path, text)), f"{'.'.join(path)} is {len(text)} x {fill!r}", None

    return st.builds(
        build,
        st.sampled_from(_string_paths(doc)),
        st.integers(SERVICE_MAX_BYTES + 1024, STREAM_MAX_BYTES - 16 * 1024),
        st.sampled_from(["x", "\u202e", "\U0001f4a5", "${input}"]),
    )


def _hole(doc: dict[str, Any], path: tuple[str, ...], raw: bytes) -> bytes:
    return _encode(_set(doc, path, _HOLE)).replace(json.dumps(_HOLE).encode(), raw, 1)


def _deep(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    # Deeper than any JSON parser on the way nests (pydantic's stops at 200, Python's json near 1000),
    # but small enough in bytes that the size check does not refuse it first.
    return st.builds(
        lambda path, depth: (
            _hole(doc, path, b"[" * depth + b"]" * depth),
            f"{'.'.join(path)} nested {depth} deep",
            None,
        ),
        st.sampled_from(_paths(doc)),
        st.integers(201, SERVICE_MAX_BYTES // 2 - 2048),
    )


def _deep_objects(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    return st.builds(
        lambda path, depth: (
            _hole(doc, path, b'{"a":' * depth + b"1" + b"}" * depth),
            f"{'.'.join(path)} nested {depth} objects deep",
            None,
        ),
        st.sampled_from(_paths(doc)),
        st.integers(201, SERVICE_MAX_BYTES // 6 - 2048),
    )


BROKEN_STRINGS: tuple[bytes, ...] = (
    b'"\xff\xfe"',  # not UTF-8
    b'"\xc0\x80"',  # overlong NUL
    b'"\xed\xa0\x80"',  # an encoded surrogate
    b'"\\ud800"',  # a lone high surrogate escape
    b'"x\\udfff"',  # a lone low surrogate escape
    b'"\\udc00\\ud800"',  # surrogates in the wrong order
    b'"a\x00b"',  # a raw control character inside a string
    b'"line\nbreak"',
    b'"unterminated',
    b'"\\x41"',  # not a JSON escape
)
BROKEN_VALUES: tuple[bytes, ...] = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"9" * 5000,  # beyond Python's int-to-text limit
    b"0x10",
    b"01",
    b"+1",
    b".5",
    b"undefined",
    b"'single'",
    b"[1,]",
    b"{,}",
)


def _broken_value(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    return st.builds(
        lambda path, raw: (_hole(doc, path, raw), f"{'.'.join(path)} = {raw[:40]!r}", None),
        st.sampled_from(_paths(doc)),
        st.sampled_from(BROKEN_STRINGS + BROKEN_VALUES),
    )


def _broken_bytes(doc: dict[str, Any], model: type[BaseModel]) -> st.SearchStrategy[tuple[bytes, str, str | None]]:
    data = _encode(doc)
    return st.one_of(
        st.integers(0, len(data) - 1).map(lambda n: (data[:n], f"cut after {n} bytes", None)),
        st.sampled_from([b"x", b"{}", b"\x00", b",", b"]"]).map(lambda tail: (data + tail, f"trailing {tail!r}", None)),
        st.just((b"\xef\xbb\xbf" + data, "UTF-8 byte order mark", None)),
        st.just((data.decode().encode("utf-16"), "UTF-16", None)),
        st.sampled_from([b"", b"null", b"[]", b"1", b'"trigger_run"', b"true", b"{}", b"[{}]", b" "]).map(
            lambda raw: (raw, f"document {raw!r}", None)
        ),
        st.binary(max_size=512).map(lambda raw: (raw, "binary noise", None)),
        st.just((data[:-1] + b',"type":"nope"}', "duplicate type key", None)),
    )


MUTATIONS: tuple[Mutation, ...] = (
    _drop_field,
    _wrong_type,
    _wrong_version,
    _wrong_message_type,
    _hostile_token,
    _oversize,
    _deep,
    _deep_objects,
    _broken_value,
    _broken_bytes,
)

#: Headers sent along: FastStream decodes by content type when one is given, so these take other paths.
HEADER_SETS: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.just({"Content-Type": "application/json"}),
    st.just({"content-type": "application/json; charset=latin-1"}),
    st.just({"Content-Type": "text/plain"}),
    st.just({"Content-Type": "application/octet-stream"}),
    st.dictionaries(
        st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
        st.from_regex(r"[!-~][ -~]{0,58}[!-~]", fullmatch=True),
        max_size=3,
    ),
)


@st.composite
def garbage(draw: st.DrawFn, target: Target) -> Garbage:
    """A message for `target` that its contract refuses."""
    workflow = draw(st.one_of(st.sampled_from(["demo", "review", "refund"]), _TOKENS))
    run_id = "r" + uuid.UUID(int=draw(st.integers(0, 2**128 - 1))).hex[:25]
    base = draw(st.sampled_from(target.bases))(workflow, run_id)
    doc = base.model_dump(mode="json")
    mutate = draw(st.sampled_from(MUTATIONS))
    data, why, mentions = draw(mutate(doc, type(base)))
    assume(target.refuses(data))
    if len(data) > SERVICE_MAX_BYTES:
        mentions = None
    headers = draw(HEADER_SETS)
    return Garbage(target.durable, target.subject(base), data, why, headers, mentions)


def explicit_garbage(target: Target) -> list[Garbage]:
    """Refusals every run tries, whatever hypothesis draws: each was once accepted, retried for minutes or
    crashed a handler (see docs/security.md, "Bad input")."""
    base = target.bases[0]("demo", "r" + uuid.uuid4().hex[:25])
    doc = base.model_dump(mode="json")
    subject = target.subject(base)
    text_path = next(p for p in _string_paths(doc) if p[0] == "body") if "body" in doc else ("actor",)
    cases = [
        (_encode({**doc, "version": 2}), "a future version", {}, "version"),
        (_encode({**doc, "version": 0}), "version 0", {}, "version"),
        (_hole(doc, text_path, b"[" * 5000 + b"]" * 5000), "nested 5000 deep", {}, None),
        (_hole(doc, text_path, b'"\\ud800"'), "lone surrogate escape", {}, None),
        (_hole(doc, text_path, b"9" * 5000), "5000-digit number", {}, None),
        (_hole(doc, text_path, b"1e400"), "number beyond float range", {}, None),
        (b"{not json", "not JSON, sent as JSON", {"Content-Type": "application/json"}, None),
        (b"\xff\xfe\x00", "not UTF-8, sent as text", {"Content-Type": "text/plain"}, None),
        (_encode(doc) + b"x", "trailing garbage", {}, None),
    ]
    out = [Garbage(target.durable, subject, data, why, headers, mentions) for data, why, headers, mentions in cases]
    for item in out:
        assert target.refuses(item.data), f"explicit example is not refused by the contract: {item.describe()}"
    return out


def draw_many(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of `strategy` (fewer if it runs dry), drawn by hypothesis, for use in bulk."""
    drawn: list[T] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn


# --- HTTP ------------------------------------------------------------------------------------------------

#: Path segments: hostile text percent-encoded, plus traversal and encodings sent as they are.
path_segments: st.SearchStrategy[str] = st.one_of(
    hostile_text.filter(bool).map(lambda v: quote(v, safe="")),
    st.sampled_from(["..", "%2e%2e", "%00", "%ff", "%", "%zz", "a" * 5000, ".", "~", "%2F", "%5C", "%C0%AF"]),
)

query_params: st.SearchStrategy[list[tuple[str, str]]] = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(["state", "workflow", "since", "until", "after", "status", "n"]), hostile_text),
        st.one_of(
            hostile_text,
            st.sampled_from(
                ["-1", "9" * 400, "1e9", "9223372036854775808", "0001-01-01T00:00:00+23:59", "settled,all", "\x00"]
            ),
        ),
    ),
    max_size=4,
)

header_values: st.SearchStrategy[str] = st.from_regex(r"[!-~]([ -~]{0,78}[!-~])?", fullmatch=True)
HEADERS: st.SearchStrategy[dict[str, str]] = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.one_of(
            st.sampled_from(["Bearer", "Basic dXNlcjpwYXNz", "bearer x", "Bearer " + "a" * 8000]),
            header_values.map(lambda v: "Bearer " + v),
            header_values,
        ),
        "Cookie": header_values.map(lambda v: f"keel_approval_session={v}; keel_approval_login_csrf={v}"),
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "x/y", "*/*"]
        ),
        "Last-Event-ID": st.one_of(st.sampled_from(["-1", "9" * 400, "1.5", "18446744073709551616"]), header_values),
        "X-Keel-Signature": header_values,
        "X-Keel-Timestamp": st.one_of(st.sampled_from(["-1", "9" * 400, "1e9", "nan"]), header_values),
        "X-Slack-Signature": header_values,
        "X-Slack-Request-Timestamp": header_values,
        "Idempotency-Key": st.one_of(header_values, st.just("k" * 4000)),
        "Accept": st.sampled_from(["text/event-stream", "application/json", "*/*", "x"]),
    },
)


def _deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


bodies: st.SearchStrategy[bytes] = st.one_of(
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=1024),
    st.sampled_from(BROKEN_STRINGS + BROKEN_VALUES),
    st.integers(500, 60_000).map(_deep_json),
    st.integers(500, 30_000).map(lambda d: b"[" * d + b"]" * d),
    st.builds(
        lambda k, v: f"token={quote(k)}&csrf={quote(v)}&action=approve&payload_hash={quote(v)}".encode(),
        hostile_text,
        hostile_text,
    ),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"payload_hash": null}', b'{"reason": "x", "payload_hash": 1}']),
)
