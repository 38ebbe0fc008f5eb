"""Create-only claims on command dedupe keys (KEEL_CLAIMS bucket).

The server's dedupe window stops duplicate *publishes* for a few minutes; a claim stops duplicate
*execution* for as long as the bucket keeps it. A command's attempt runs only after its claim is won.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

#: How many past states a claim value keeps, for the dead letter of a command that never finishes.
MAX_HISTORY = 20


class ClaimState(StrEnum):
    NEW = "new"  # nobody had claimed it: run the attempt
    # Claimed before: the attempt either finished (its outcome is on the run, look it up) or its holder
    # stopped mid-attempt (the outcome is not known). A claim is never marked done: the outcome event,
    # found by its dedupe key, is the record of completion, which saves a write per attempt.
    TAKEN_OVER = "taken_over"


@dataclass(frozen=True)
class Claim:
    key: str
    state: ClaimState
    revision: int
    previous_holder: str | None = None


class ClaimLost(Exception):
    """Another holder took the claim first; the command will come back if it still needs doing."""


class Claims(Protocol):
    async def claim(self, dedupe_key: str, holder: str) -> Claim: ...


def claim_key(dedupe_key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; a hash also bounds the length.
    return "c." + hashlib.sha256(dedupe_key.encode()).hexdigest()


def _value(state: str, holder: str, previous: dict[str, Any] | None = None, **extra: object) -> bytes:
    """A claim value. It carries the states before it (without their outcomes), so a command that
    keeps failing can be dead-lettered with who held it, when, and how each try ended."""
    history: list[dict[str, Any]] = []
    if previous:
        history = [*previous.get("history", []), {k: v for k, v in previous.items() if k not in ("history", "outcome")}]
    doc = {"state": state, "holder": holder, "at": datetime.now(UTC).isoformat(), **extra}
    return json.dumps({**doc, "history": history[-MAX_HISTORY:]}).encode()


def describe_claim(doc: dict[str, Any]) -> str:
    """One line per state the claim went through, oldest first: for humans reading a dead letter."""
    lines = []
    for entry in [*doc.get("history", []), {k: v for k, v in doc.items() if k not in ("history", "outcome")}]:
        line = f"{entry.get('at', '?')} {entry.get('state', '?')} by {entry.get('holder', '?')}"
        if entry.get("took_over_from"):
            line += f" (took over from {entry['took_over_from']})"
        if entry.get("error"):
            line += f": {entry['error']}"
        lines.append(line)
    return "\n".join(lines)


class KvClaims:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def claim(self, dedupe_key: str, holder: str) -> Claim:
        key = claim_key(dedupe_key)
        try:
            revision = await self._kv.create(key, _value("running", holder))
            return Claim(key, ClaimState.NEW, revision)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            # Expired or deleted between our create and get: try once more from the start.
            return await self.claim(dedupe_key, holder)
        doc = json.loads(entry.value or b"{}")
        # The message came back: its holder finished but the ack was lost, or it stopped heartbeating
        # (it died or hung), because the server redelivers only after the ack deadline passes unrenewed.
        try:
            revision = await self._kv.update(
                key, _value("running", holder, doc, took_over_from=doc.get("holder")), last=entry.revision
            )
        except KeyWrongLastSequenceError as exc:
            raise ClaimLost(f"claim {key} changed hands while taking it over") from exc
        return Claim(key, ClaimState.TAKEN_OVER, revision, doc.get("holder"))

    async def note_error(self, dedupe_key: str, holder: str, error: str) -> None:
        """Record on a running claim that this holder's try failed and how (it stays running, so the
        next delivery takes it over). Best effort: losing the race to another holder is fine."""
        key = claim_key(dedupe_key)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return
        doc = json.loads(entry.value or b"{}")
        if doc.get("state") != "running" or doc.get("holder") != holder:
            return
        value = _value("running", holder, doc, error=error[:500], took_over_from=doc.get("took_over_from"))
        try:
            await self._kv.update(key, value, last=entry.revision)
        except KeyWrongLastSequenceError:
            return

    async def describe(self, dedupe_key: str) -> str | None:
        """The claim's history as text, or None when the command was never claimed."""
        doc = await self._doc(claim_key(dedupe_key))
        return describe_claim(doc) if doc else None

    async def _doc(self, key: str) -> dict[str, Any] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        doc = json.loads(entry.value or b"{}")
        return doc if isinstance(doc, dict) else None
