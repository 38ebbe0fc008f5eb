"""Trusted checkpoints: a small statement of how far the log reached, held outside the log.

A checkpoint names the newest segment (index and digest), the last stream sequence it covers, and the
global tree size and root. An auditor keeps one (or the service writes one to a store it cannot delete
from) and passes it to ``verify``; a log that ends before it, or disagrees with it, is tampered. It may
be signed with an audit key (then it is checked against the keyring) or plain (then whoever supplies
it vouches for it).

File format (RFC 8785 JSON)::

    {"v": 1, "t": "checkpoint", "stream": "KEEL_EVENTS", "segment_index": 42, "last_seq": 1000,
     "tree_size": 1003, "tree_root": "<hex>", "segment_digest": "<hex>",
     "signature": {"key_id": "...", "ed25519": "<base64>"}}      <- optional

The signature covers ``b"keel-audit/checkpoint/v1\\0" + JCS(the object without "signature")``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from keel_audit.canonical import canonical_bytes
from keel_audit.errors import AuditError
from keel_audit.fsutil import atomic_write
from keel_audit.keyring import Keyring
from keel_audit.segment import Seal
from keel_audit.signing import Signer, verify_signature

CHECKPOINT_DOMAIN: Final = b"keel-audit/checkpoint/v1\x00"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stream: str
    segment_index: int
    last_seq: int
    tree_size: int
    tree_root: str
    segment_digest: str
    key_id: str | None = None
    signature: bytes | None = None

    @classmethod
    def of_seal(cls, seal: Seal, segment_digest: str) -> Checkpoint:
        return cls(
            stream=seal.stream,
            segment_index=seal.segment_index,
            last_seq=seal.last_seq,
            tree_size=seal.tree_size,
            tree_root=seal.tree_root,
            segment_digest=segment_digest,
        )

    def body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "t": "checkpoint",
            "stream": self.stream,
            "segment_index": self.segment_index,
            "last_seq": self.last_seq,
            "tree_size": self.tree_size,
            "tree_root": self.tree_root,
            "segment_digest": self.segment_digest,
        }

    def signed_by(self, signer: Signer) -> Checkpoint:
        signature = signer.sign(CHECKPOINT_DOMAIN + canonical_bytes(self.body()))
        return replace(self, key_id=signer.key_id, signature=signature)

    def signature_problem(self, keyring: Keyring) -> str | None:
        """Why the signature is not acceptable (None when valid, or when the checkpoint is plain)."""
        if self.signature is None or self.key_id is None:
            return None
        entry = keyring.get(self.key_id)
        if entry is None:
            return f"checkpoint is signed by unknown key {self.key_id}"
        if not verify_signature(entry.public_key, self.signature, CHECKPOINT_DOMAIN + canonical_bytes(self.body())):
            return f"checkpoint signature by {self.key_id} does not verify"
        return None

    def to_bytes(self) -> bytes:
        obj = self.body()
        if self.signature is not None and self.key_id is not None:
            obj["signature"] = {
                "key_id": self.key_id,
                "ed25519": base64.b64encode(self.signature).decode("ascii"),
            }
        return canonical_bytes(obj) + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        try:
            obj = json.loads(raw)
            if obj.get("t") != "checkpoint" or obj.get("v") != 1:
                raise ValueError("not a version 1 checkpoint")
            sig = obj.get("signature")
            return cls(
                stream=str(obj["stream"]),
                segment_index=int(obj["segment_index"]),
                last_seq=int(obj["last_seq"]),
                tree_size=int(obj["tree_size"]),
                tree_root=str(obj["tree_root"]),
                segment_digest=str(obj["segment_digest"]),
                key_id=None if sig is None else str(sig["key_id"]),
                signature=None if sig is None else base64.b64decode(sig["ed25519"], validate=True),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"checkpoint is not valid: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            return cls.from_bytes(path.read_bytes())
        except OSError as exc:
            raise AuditError(f"cannot read checkpoint {path}: {exc}") from exc

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        try:
            atomic_write(path, self.to_bytes(), overwrite=overwrite)
        except FileExistsError as exc:
            raise AuditError(f"{path} exists; refusing to replace a checkpoint") from exc
