"""Keyrings of the Ed25519 keys Keel services sign with, and the signing keys themselves.

Two services sign what another one must be able to trust even when NATS permissions are wide open
(decision 026): the approval service its decisions (`keel_shared.decisions`), the router the writes it
schedules (`keel_shared.schedules`). Each has one signing key, readable by that service only, and a
keyring of public keys the verifying services read. A keyring is a local file, never a NATS bucket, so a
misconfigured account or a stolen NATS credential cannot add a key to it.

Keyring file::

    {"v": 1, "purpose": "<what its keys sign>",
     "keys": [{"key_id": "...", "public_key": "<base64 raw 32 bytes>", "added_at": "<RFC 3339>",
               "retired_at": null | "<RFC 3339>", "revoked": false}]}

A retired key still verifies what it signed before it was retired (work in flight keeps its proofs); a
revoked key verifies nothing.
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

from keel_shared.settings import KeelSettings
from keel_shared.signing import (
    Signer,
    decode_public_key,
    encode_public_key,
    key_id_of,
    signer_from_text,
    verify_signature,
    write_private_seed,
)


class KeyringError(ValueError):
    """A keyring file that cannot be read as one."""


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
class Keyring:
    """The keys a verifier trusts for one purpose, by key id."""

    purpose: str
    keys: tuple[TrustedKey, ...] = ()
    #: Where it was read from, for messages (None: nothing was found).
    source: Path | None = None

    def problem(self, key_id: str, signature: str, statement: bytes, signed_at: datetime) -> str | None:
        """Why `signature` (base64) by `key_id` over `statement`, made at `signed_at`, must not be
        believed, or None when it verifies."""
        key = next((k for k in self.keys if k.key_id == key_id), None)
        if key is None:
            return f"signed with key {key_id}, which the keyring ({self.source or 'none found'}) does not hold"
        if key.revoked:
            return f"signed with key {key_id}, which is revoked"
        if key.retired_at is not None and signed_at > key.retired_at:
            return f"signed with key {key_id} after it was retired ({key.retired_at.isoformat()})"
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return "the signature is not base64"
        if not verify_signature(key.public_key, raw, statement):
            return f"the signature does not verify with key {key_id}"
        return None

    def holds(self, key_id: str) -> bool:
        return any(k.key_id == key_id for k in self.keys)

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "purpose": self.purpose, "keys": [k.to_json() for k in self.keys]}

    @classmethod
    def from_json(cls, doc: Any, purpose: str, source: Path | None = None) -> Keyring:
        where = source or "keyring"
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("purpose") != purpose:
            raise KeyringError(f"{where} is not a version-1 {purpose} keyring")
        keys = []
        try:
            for entry in doc["keys"]:
                public = decode_public_key(entry["public_key"])
                if key_id_of(public) != entry["key_id"]:
                    raise KeyringError(f"key {entry['key_id']} in {where} does not match its public key")
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
        except KeyringError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{where} has an unreadable key entry: {exc}") from exc
        return cls(purpose, tuple(keys), source)


def trusting(purpose: str, *signers: Signer) -> Keyring:
    """A keyring that trusts these keys (for a verifier given its keys directly)."""
    return Keyring(purpose, tuple(TrustedKey(k.key_id, k.public_key, datetime.now(UTC)) for k in signers))


def load_keyring(path: Path, purpose: str) -> Keyring:
    """The keyring at `path`; an empty one (that trusts nothing) when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Keyring(purpose)
    try:
        return Keyring.from_json(json.loads(text), purpose, path)
    except json.JSONDecodeError as exc:
        raise KeyringError(f"{path} is not JSON: {exc}") from exc


class KeyringFile:
    """The keyring file a verifier trusts, read again when a signature names a key it does not hold yet
    (a rotation, or a signer that created its key after this process started), at most once a second."""

    def __init__(self, path: Path, purpose: str, reload_interval: float = 1.0) -> None:
        self.path = path
        self.purpose = purpose
        self._interval = reload_interval
        self._keyring = load_keyring(path, purpose)
        self._loaded_at = time.monotonic()

    def problem(self, key_id: str, signature: str, statement: bytes, signed_at: datetime) -> str | None:
        if not self._keyring.holds(key_id):
            now = time.monotonic()
            if now - self._loaded_at >= self._interval or not self._keyring.keys:
                self._loaded_at = now
                try:
                    self._keyring = load_keyring(self.path, self.purpose)
                except KeyringError as exc:
                    return f"the keyring cannot be read: {exc}"
        return self._keyring.problem(key_id, signature, statement, signed_at)


#: Anything that says whether a signature is to be believed.
Verifier = Keyring | KeyringFile


def sign(signer: Signer, statement: bytes) -> str:
    return base64.b64encode(signer.sign(statement)).decode("ascii")


def _write_keyring(path: Path, keyring: Keyring) -> None:
    # Readable by everyone who verifies (it holds public keys only); replaced atomically.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keyring.to_json(), indent=2) + "\n")
    tmp.replace(path)


def ensure_signing_key(key_path: Path, keyring_path: Path, purpose: str) -> Signer:
    """The signing key at `key_path`, created (0600, in a 0700 folder) when missing, and its public key in
    the keyring file, added when missing."""
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Another process may have made it first: then that one is used.
        with contextlib.suppress(FileExistsError):
            write_private_seed(Signer.generate(), key_path)
    signer = signer_from_text(key_path.read_text("ascii"))
    keyring = load_keyring(keyring_path, purpose)
    if not keyring.holds(signer.key_id):
        added = TrustedKey(signer.key_id, signer.public_key, datetime.now(UTC))
        _write_keyring(keyring_path, Keyring(purpose, (*keyring.keys, added), keyring_path))
    return signer


@dataclass(frozen=True)
class SignerKeys:
    """Where one signing service's key and keyring live: a setting each (`KeelSettings` field names),
    defaulting to files under `<data dir>/keys`."""

    purpose: str
    key_setting: str
    keyring_setting: str
    key_name: str
    keyring_name: str

    def key_path(self, settings: KeelSettings) -> Path:
        path: Path | None = getattr(settings, self.key_setting)
        return path or settings.data_dir / "keys" / self.key_name

    def keyring_path(self, settings: KeelSettings) -> Path:
        path: Path | None = getattr(settings, self.keyring_setting)
        return path or settings.data_dir / "keys" / self.keyring_name

    def keyring(self, settings: KeelSettings) -> KeyringFile:
        """The keys a verifier trusts (read again when a signature names an unknown key id)."""
        return KeyringFile(self.keyring_path(settings), self.purpose)

    def ensure(self, settings: KeelSettings) -> Signer:
        """The signing key, created when missing, and listed in its keyring (`keel init`, `keel up` and
        the signing service's start call it)."""
        return ensure_signing_key(self.key_path(settings), self.keyring_path(settings), self.purpose)

    def rotate(self, settings: KeelSettings) -> tuple[str, str]:
        return rotate_signing_key(self.key_path(settings), self.keyring_path(settings), self.purpose)


def rotate_signing_key(key_path: Path, keyring_path: Path, purpose: str) -> tuple[str, str]:
    """A new signing key; the old one is retired now (it still verifies what it signed before) and kept
    beside the new as `<name>.retired-<key id>`. Returns (old, new) key ids."""
    old = ensure_signing_key(key_path, keyring_path, purpose)
    now = datetime.now(UTC)
    key_path.replace(key_path.with_name(f"{key_path.name}.retired-{old.key_id}"))
    new = ensure_signing_key(key_path, keyring_path, purpose)
    keyring = load_keyring(keyring_path, purpose)
    keys = tuple(replace(k, retired_at=now) if k.key_id == old.key_id else k for k in keyring.keys)
    _write_keyring(keyring_path, Keyring(purpose, keys, keyring_path))
    return old.key_id, new.key_id
