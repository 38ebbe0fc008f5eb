"""Signed approval decisions: the approval service's key, and the keyring the router and executors trust.

A grant unlocks a write only where its Ed25519 signature verifies against this keyring: the router checks
it before the grant counts, and the executor checks it again right before it writes (decision 026). The
keyring is a local file, never a NATS bucket, so a misconfigured account or a stolen NATS credential
cannot add a key to it.

Keyring file (`KEEL_APPROVAL_KEYRING_FILE`, default `<data dir>/keys/approval-keyring.json`)::

    {"v": 1, "purpose": "keel-approval-decisions",
     "keys": [{"key_id": "...", "public_key": "<base64 raw 32 bytes>", "added_at": "<RFC 3339>",
               "retired_at": null | "<RFC 3339>", "revoked": false}]}

A retired key still verifies decisions made before it was retired (in-flight runs keep their grants); a
revoked key verifies nothing. `keel keys rotate-approval` adds a new key and retires the old one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel_contracts.approvals import ApprovalDenied, ApprovalGranted, DecisionProof, proof_of, unsigned_proof
from keel_shared.settings import KeelSettings
from keel_shared.signing import (
    Signer,
    decode_public_key,
    encode_public_key,
    key_id_of,
    signer_from_text,
    verify_signature,
    write_private_key,
)

PURPOSE = "keel-approval-decisions"


class KeyringError(ValueError):
    """A keyring file that cannot be read as one."""


def signing_key_path(settings: KeelSettings) -> Path:
    return settings.approval_signing_key_file or settings.data_dir / "keys" / "approval-signing.pem"


def keyring_path(settings: KeelSettings) -> Path:
    return settings.approval_keyring_file or settings.data_dir / "keys" / "approval-keyring.json"


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: bytes
    added_at: datetime
    retired_at: datetime | None = None
    revoked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_key": encode_public_key(self.public_key),
            "added_at": self.added_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class DecisionKeyring:
    """The approval keys a verifier trusts, by key id."""

    keys: tuple[TrustedKey, ...] = ()
    #: Where it was read from, for messages (None: empty, nothing found).
    source: Path | None = None

    def problem(self, proof: DecisionProof) -> str | None:
        """Why this signed decision must not be believed, or None when it verifies."""
        key = next((k for k in self.keys if k.key_id == proof.key_id), None)
        if key is None:
            where = self.source or "no approval keyring"
            return f"signed with key {proof.key_id}, which the keyring ({where}) does not hold"
        if key.revoked:
            return f"signed with key {proof.key_id}, which is revoked"
        if key.retired_at is not None and proof.decided_at > key.retired_at:
            return f"signed with key {proof.key_id} after it was retired ({key.retired_at.isoformat()})"
        try:
            signature = base64.b64decode(proof.signature, validate=True)
        except (binascii.Error, ValueError):
            return "the signature is not base64"
        if not verify_signature(key.public_key, signature, proof.statement()):
            return f"the signature does not verify with key {proof.key_id}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "purpose": PURPOSE, "keys": [k.to_json() for k in self.keys]}

    @classmethod
    def from_json(cls, doc: Any, source: Path | None = None) -> DecisionKeyring:
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("purpose") != PURPOSE:
            raise KeyringError(f"{source or 'keyring'} is not a version-1 {PURPOSE} keyring")
        keys = []
        try:
            for entry in doc["keys"]:
                public = decode_public_key(entry["public_key"])
                if key_id_of(public) != entry["key_id"]:
                    raise KeyringError(f"key {entry['key_id']} in {source} does not match its public key")
                retired = entry.get("retired_at")
                keys.append(
                    TrustedKey(
                        key_id=entry["key_id"],
                        public_key=public,
                        added_at=datetime.fromisoformat(entry["added_at"]),
                        retired_at=datetime.fromisoformat(retired) if retired else None,
                        revoked=bool(entry.get("revoked", False)),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, KeyringError):
                raise
            raise KeyringError(f"{source or 'keyring'} has an unreadable key entry: {exc}") from exc
        return cls(tuple(keys), source)


def load_keyring(path: Path) -> DecisionKeyring:
    """The keyring at `path`; an empty one (that trusts nothing) when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DecisionKeyring((), None)
    try:
        return DecisionKeyring.from_json(json.loads(text), path)
    except json.JSONDecodeError as exc:
        raise KeyringError(f"{path} is not JSON: {exc}") from exc


class KeyringFile:
    """The keyring file a verifier trusts, read again when a decision names a key it does not hold yet (a
    rotation, or an approval service that created its key after this process started), at most once a
    second."""

    def __init__(self, path: Path, reload_interval: float = 1.0) -> None:
        self.path = path
        self._interval = reload_interval
        self._keyring = load_keyring(path)
        self._loaded_at = time.monotonic()

    @property
    def keyring(self) -> DecisionKeyring:
        return self._keyring

    def problem(self, proof: DecisionProof) -> str | None:
        if not any(k.key_id == proof.key_id for k in self._keyring.keys):
            now = time.monotonic()
            if now - self._loaded_at >= self._interval or not self._keyring.keys:
                self._loaded_at = now
                try:
                    self._keyring = load_keyring(self.path)
                except KeyringError as exc:
                    return f"the approval keyring cannot be read: {exc}"
        return self._keyring.problem(proof)


def _write_keyring(path: Path, keyring: DecisionKeyring) -> None:
    # Readable by everyone who verifies (it holds public keys only); replaced atomically.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keyring.to_json(), indent=2) + "\n")
    tmp.replace(path)


def ensure_decision_keys(settings: KeelSettings) -> Signer:
    """The approval service's signing key, created (0600, in a 0700 folder) when missing, and its public
    key in the keyring file, added when missing. `keel init` calls it; so does the approval service."""
    key_path = signing_key_path(settings)
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Another process may have made it first: then that one is used.
        with contextlib.suppress(FileExistsError):
            write_private_key(Signer.generate(), key_path)
    signer = signer_from_text(key_path.read_text("ascii"))
    ring_path = keyring_path(settings)
    keyring = load_keyring(ring_path)
    if not any(k.key_id == signer.key_id for k in keyring.keys):
        added = TrustedKey(signer.key_id, signer.public_key, datetime.now(UTC))
        _write_keyring(ring_path, DecisionKeyring((*keyring.keys, added), ring_path))
    return signer


def rotate_decision_key(settings: KeelSettings) -> tuple[str, str]:
    """A new signing key for the approval service; the old one is retired now (it still verifies what it
    signed before) and kept beside the new as `<name>.retired-<key id>`. Returns (old, new) key ids."""
    old = ensure_decision_keys(settings)
    key_path = signing_key_path(settings)
    now = datetime.now(UTC)
    key_path.replace(key_path.with_name(f"{key_path.name}.retired-{old.key_id}"))
    new = ensure_decision_keys(settings)
    ring_path = keyring_path(settings)
    keyring = load_keyring(ring_path)
    keys = tuple(replace(k, retired_at=now) if k.key_id == old.key_id else k for k in keyring.keys)
    _write_keyring(ring_path, DecisionKeyring(keys, ring_path))
    return old.key_id, new.key_id


def sign_decision(
    signer: Signer, event: ApprovalGranted | ApprovalDenied, approves_step: str
) -> ApprovalGranted | ApprovalDenied:
    """The decision event with its signature (and the key id and write it names) filled in."""
    proof = unsigned_proof(event, signer.key_id, approves_step)
    signature = base64.b64encode(signer.sign(proof.statement())).decode("ascii")
    body = event.body.model_copy(
        update={"approves_step": approves_step, "key_id": signer.key_id, "signature": signature}
    )
    return event.model_copy(update={"body": body})


Verifier = DecisionKeyring | KeyringFile


def decision_problem(keyring: Verifier, event: ApprovalGranted | ApprovalDenied) -> str | None:
    """Why a decision event must not be folded (unsigned, unknown key, bad signature), or None."""
    proof = proof_of(event)
    if proof is None:
        return "the decision carries no signature"
    return keyring.problem(proof)


def grant_problem(keyring: Verifier, proof: DecisionProof, run_id: str, step_id: str | None, digest: str) -> str | None:
    """Why a grant carried by a scheduled write does not unlock that write, or None when it does: it must
    verify, be a grant, and name this run, this step and the hash of the payload about to be sent."""
    if proof.decision != "granted":
        return f"approval {proof.approval_id} was not granted"
    if proof.run_id != run_id or proof.approves_step != step_id:
        return f"approval {proof.approval_id} is for step {proof.approves_step} of run {proof.run_id}"
    if proof.payload_hash != digest:
        return f"approval {proof.approval_id} approved payload {proof.payload_hash}, not {digest}"
    return keyring.problem(proof)
