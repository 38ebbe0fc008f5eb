"""Signed write schedules: the router signs every write it schedules, executors send only those.

Reads change nothing and go unsigned (the hot path stays as it was). A write's `step_scheduled` (also the
first step a `run_started` carries) holds the router's Ed25519 signature over `StepScheduled.statement`;
an executor refuses a write whose schedule does not verify against the router keyring
(`KEEL_ROUTER_KEYRING_FILE`, default `<data dir>/keys/router-keyring.json`), whoever stored it under the
router's token (decision 026). Key and keyring files: `keel_shared.keyrings`.
"""

from __future__ import annotations

from collections.abc import Iterable

from keel_contracts.envelope import Message
from keel_contracts.events import RunStarted, StepScheduled
from keel_shared.keyrings import SignerKeys, Verifier, sign
from keel_shared.signing import Signer

PURPOSE = "keel-router-schedules"
#: The router's signing key and the keyring executors trust.
KEYS = SignerKeys(
    PURPOSE, "router_signing_key_file", "router_keyring_file", "router-signing.key", "router-keyring.json"
)


def sign_schedule(signer: Signer, event: StepScheduled) -> StepScheduled:
    unsigned = event.model_copy(update={"body": event.body.model_copy(update={"key_id": signer.key_id})})
    signature = sign(signer, unsigned.statement())
    return unsigned.model_copy(update={"body": unsigned.body.model_copy(update={"signature": signature})})


def signed_writes(signer: Signer, events: Iterable[Message]) -> list[Message]:
    """`events` with every write they schedule signed (a `step_scheduled`, or a start's first step)."""
    out: list[Message] = []
    for event in events:
        if isinstance(event, StepScheduled) and event.body.side_effect == "write":
            event = sign_schedule(signer, event)
        elif isinstance(event, RunStarted):
            first = event.body.first_step
            if first is not None and first.body.side_effect == "write":
                event = event.with_first_step(sign_schedule(signer, first))
        out.append(event)
    return out


def schedule_problem(keyring: Verifier, event: StepScheduled) -> str | None:
    """Why a scheduled write must not be sent (unsigned, unknown key, bad signature), or None. A read
    needs no signature."""
    if event.body.side_effect != "write":
        return None
    if event.body.key_id is None or event.body.signature is None:
        return "the write's schedule carries no router signature"
    return keyring.problem(event.body.key_id, event.body.signature, event.statement(), event.occurred_at)
