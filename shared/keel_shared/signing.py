"""Ed25519 keys as Keel uses them: generation, key material in files, key ids, verification.

Signing and verifying use libsodium (PyNaCl): it loads in a few MB and verifies in about 50 µs, where the
approval service, the router and the executors sign and verify decisions and writes (decision 026).
Key material is read in either form:

* the raw 32-byte Ed25519 seed in standard base64 (44 characters): what `keel init` writes for the
  approval and router keys, and handy for an environment variable because it has no newlines;
* a PKCS#8 PEM private key (``-----BEGIN PRIVATE KEY-----``): what ``keel audit keys generate`` writes.
  PEM is read and written with ``cryptography``, imported only then.

The key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key: stable, derivable by
any verifier from the public key alone, and short enough to print.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing


class KeyMaterialError(ValueError):
    """Key material that is not an Ed25519 key in a form Keel reads."""


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def encode_public_key(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode("ascii")


def decode_public_key(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class Signer:
    """A private key (its 32-byte seed) with its derived public key and key id."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise KeyMaterialError(f"an Ed25519 seed has 32 bytes, got {len(self.seed)}")
        object.__setattr__(self, "_key", nacl.signing.SigningKey(self.seed))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        key: nacl.signing.SigningKey = self.__dict__["_key"]
        return key

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing_key.sign(message).signature)

    @classmethod
    def generate(cls) -> Signer:
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        return cls(seed)

    def seed_text(self) -> str:
        return base64.b64encode(self.seed).decode("ascii")

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _from_pem(text: str) -> Signer:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError("the PEM key is not an Ed25519 private key")
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return Signer(raw)


def signer_from_text(text: str) -> Signer:
    """A base64 Ed25519 seed or a PKCS#8 PEM private key (see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return _from_pem(stripped)
    try:
        seed = base64.b64decode(stripped, validate=True)
    except binascii.Error as exc:
        raise KeyMaterialError("signing key is neither PEM nor a base64 Ed25519 seed") from exc
    if len(seed) != 32:
        raise KeyMaterialError(f"a base64 Ed25519 seed decodes to 32 bytes, got {len(seed)}")
    return Signer(seed)


def _write_new_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start, refusing to replace an existing key, then fsynced.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_private_key(signer: Signer, path: Path) -> None:
    """Write the key as PKCS#8 PEM, readable by the owner only, refusing to replace an existing key."""
    _write_new_private(path, signer.to_pem())


def write_private_seed(signer: Signer, path: Path) -> None:
    """Write the key as its base64 seed, readable by the owner only, refusing to replace an existing key."""
    _write_new_private(path, (signer.seed_text() + "\n").encode("ascii"))


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True
