"""Turning bytes into typed messages and back, with a clear reason whenever it can't be done."""

import json
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

from keel_contracts.events import EVENT_TYPES, RunEvent
from keel_contracts.topology import emitter_problem

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

_EVENT_ADAPTER: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


class ContractViolation(ValueError):
    """A message does not satisfy its contract. `reason` is a short code, `detail` says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _describe(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ContractViolation("too_large", f"message is {len(data)} bytes, the limit is {max_bytes}")


def decode(model: type[M], data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> M:
    _check_size(data, max_bytes)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise _violation(exc) from exc


def decode_with(adapter: TypeAdapter[T], data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> T:
    """`decode` for a type that is not one model (a discriminated union of commands, say)."""
    _check_size(data, max_bytes)
    try:
        return adapter.validate_json(data)
    except ValidationError as exc:
        raise _violation(exc) from exc


def _violation(exc: ValidationError) -> ContractViolation:
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return ContractViolation("malformed_json", _describe(exc))
    return ContractViolation("invalid", _describe(exc))


def parse_json(data: bytes) -> Any:
    """A message body as JSON, parsed the way `decode` parses it (no lone surrogates, no NaN, bounded
    nesting and numbers), for a reader that validates the document itself."""
    try:
        return pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        raise ContractViolation("malformed_json", f"not valid JSON: {exc}") from None


class WrongEmitter(ContractViolation):
    """A stored run event whose subject does not name its type's rightful emitter in the topology table (or
    names another type than the event is): whoever stored it, it is never believed (decision 026)."""

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__("wrong_emitter", f"{subject}: {detail}")
        self.subject = subject


def check_emitter(subject: str, event_type: str | None) -> None:
    """Raise `WrongEmitter` unless `subject` is where the rightful emitter of `event_type` stores it."""
    problem = emitter_problem(subject, event_type)
    if problem is not None:
        raise WrongEmitter(subject, problem)


def decode_event(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, subject: str | None = None) -> RunEvent:
    """Decode any run event; with the `subject` it was stored under, only if that is its rightful
    emitter's (`WrongEmitter` otherwise). An event type this version does not know is `unknown_type`, not
    `invalid`, so readers can skip events written by a newer Keel instead of treating them as corrupt."""
    _check_size(data, max_bytes)
    try:
        event = _EVENT_ADAPTER.validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise ContractViolation("malformed_json", _describe(exc)) from exc
        if any(e["type"] == "union_tag_invalid" for e in errors):
            kind = _peek_type(data)
            raise ContractViolation("unknown_type", f"event type {kind!r} is not one of {sorted(EVENT_TYPES)}") from exc
        raise ContractViolation("invalid", _describe(exc)) from exc
    if subject is not None:
        check_emitter(subject, event.type)
    return event


def _peek_type(data: bytes) -> Any:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc.get("type") if isinstance(doc, dict) else None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()
