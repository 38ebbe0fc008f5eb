"""The audit service's signing key: where it is found (a file, or an environment variable).

Accepted key material, in a file or in ``KEEL_AUDIT_SIGNING_KEY``: a PKCS#8 PEM private key (what
``keel audit keys generate`` writes) or the raw 32-byte Ed25519 seed in standard base64. The key type,
key ids and verification are Keel's one Ed25519 helper (``keel_shared.signing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from keel_audit.errors import AuditError
from keel_shared.signing import (
    KeyMaterialError,
    Signer,
    decode_public_key,
    encode_public_key,
    key_id_of,
    verify_signature,
    write_private_key,
)
from keel_shared.signing import signer_from_text as _signer_from_text

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "Signer",
    "decode_public_key",
    "encode_public_key",
    "key_id_of",
    "load_signer",
    "signer_from_text",
    "verify_signature",
    "write_private_key",
]

KEY_ENV: Final = "KEEL_AUDIT_SIGNING_KEY"
KEY_FILE_ENV: Final = "KEEL_AUDIT_SIGNING_KEY_FILE"


def signer_from_text(text: str) -> Signer:
    try:
        return _signer_from_text(text)
    except KeyMaterialError as exc:
        raise AuditError(str(exc)) from exc


def load_signer(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Signer:
    """The signing key from ``path``, else the file named by ``$KEEL_AUDIT_SIGNING_KEY_FILE``, else the
    text of ``$KEEL_AUDIT_SIGNING_KEY``."""
    env = os.environ if environ is None else environ
    if path is None and env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
    if path is not None:
        try:
            return signer_from_text(path.read_text("ascii"))
        except OSError as exc:
            raise AuditError(f"cannot read signing key {path}: {exc}") from exc
    if env.get(KEY_ENV):
        return signer_from_text(env[KEY_ENV])
    raise AuditError(f"no signing key: pass a key file or set {KEY_FILE_ENV} or {KEY_ENV}")
