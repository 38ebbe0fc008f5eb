"""Create-only claims on command dedupe keys (KEEL_CLAIMS bucket).

The server's dedupe window stops duplicate *publishes* for a few minutes; a claim stops duplicate
*execution* for as long as the bucket keeps it. A command's attempt runs only after its claim is won.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


class ClaimState(StrEnum):
    NEW = "new"  # nobody had claimed it: run the attempt
    TAKEN_OVER = "taken_over"  # a previous holder stopped mid-attempt: its outcome is not known
    DONE = "done"  # the attempt finished and its outcome was recorded: do nothing


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

    async def complete(self, claim: Claim, holder: str, outcome_seq: int) -> None: ...


def claim_key(dedupe_key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; a hash also bounds the length.
    return "c." + hashlib.sha256(dedupe_key.encode()).hexdigest()


def _value(state: str, holder: str, **extra: object) -> bytes:
    return json.dumps({"state": state, "holder": holder, "at": datetime.now(UTC).isoformat(), **extra}).encode()


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
        if doc.get("state") == "done":
            return Claim(key, ClaimState.DONE, entry.revision or 0, doc.get("holder"))
        # The message came back while the claim says "running": the holder stopped heartbeating (it died
        # or hung), because the server redelivers only after the ack deadline passes unrenewed.
        try:
            revision = await self._kv.update(
                key, _value("running", holder, took_over_from=doc.get("holder")), last=entry.revision
            )
        except KeyWrongLastSequenceError as exc:
            raise ClaimLost(f"claim {key} changed hands while taking it over") from exc
        return Claim(key, ClaimState.TAKEN_OVER, revision, doc.get("holder"))

    async def complete(self, claim: Claim, holder: str, outcome_seq: int) -> None:
        try:
            await self._kv.update(claim.key, _value("done", holder, outcome_seq=outcome_seq), last=claim.revision)
        except KeyWrongLastSequenceError as exc:
            raise ClaimLost(f"claim {claim.key} was taken over before it could be completed") from exc
