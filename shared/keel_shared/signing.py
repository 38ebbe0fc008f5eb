"""Ed25519 keys as Keel uses them: generation, PEM or base64-seed key material, key ids, verification.

The audit service signs segments with one (keel_audit.signing), the approval service signs decisions with
another (keel_shared.decisions). The key id is the first 16 hex digits of SHA-256 over the raw 32-byte
public key: stable, derivable by any verifier from the public key alone, and short enough to print.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


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
    """A private key with its derived public key and key id."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def signer_from_text(text: str) -> Signer:
    """A PKCS#8 PEM private key, or the raw 32-byte Ed25519 seed in standard base64 (44 characters, handy
    for an environment variable because it has no newlines)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(stripped.encode("ascii"), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyMaterialError("the PEM key is not an Ed25519 private key")
        return Signer(key)
    try:
        seed = base64.b64decode(stripped, validate=True)
    except binascii.Error as exc:
        raise KeyMaterialError("signing key is neither PEM nor a base64 Ed25519 seed") from exc
    if len(seed) != 32:
        raise KeyMaterialError(f"a base64 Ed25519 seed decodes to 32 bytes, got {len(seed)}")
    return Signer.from_seed(seed)


def write_private_key(signer: Signer, path: Path) -> None:
    """Write the key as PEM, readable by the owner only, refusing to replace an existing key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.to_pem())
        handle.flush()
        os.fsync(handle.fileno())


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
