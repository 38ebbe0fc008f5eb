"""The audit service's configuration, resolved from :class:`KeelSettings` (``KEEL_AUDIT_*``).

Paths default under the data dir so that ``keel up`` and ``keel audit`` agree without configuration:
segments in ``<data_dir>/audit``, the signing key in ``<data_dir>/audit-keys`` (a separate directory, so
the audit directory can be copied to an auditor without the private key).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from keel_audit.errors import AuditError
from keel_audit.records import SensitivePaths, fixed_sensitive_paths, no_sensitive_paths
from keel_audit.signing import KEY_ENV, Signer, load_signer, write_private_key
from keel_audit.writer import SegmentPolicy
from keel_shared.logging import get_logger
from keel_shared.settings import KeelSettings

log = get_logger(__name__)


def audit_dir(settings: KeelSettings) -> Path:
    return settings.audit_dir or settings.data_dir / "audit"


def signing_key_file(settings: KeelSettings) -> Path:
    return settings.audit_signing_key_file or settings.data_dir / "audit-keys" / "signing.pem"


def segment_policy(settings: KeelSettings) -> SegmentPolicy:
    heartbeat = settings.audit_heartbeat_seconds
    return SegmentPolicy(
        max_records=settings.audit_segment_max_records,
        max_age=timedelta(seconds=settings.audit_segment_max_age_seconds),
        heartbeat=None if heartbeat is None else timedelta(seconds=heartbeat),
    )


def sensitive_paths(settings: KeelSettings) -> SensitivePaths:
    pointers = settings.audit_sensitive_pointers
    return fixed_sensitive_paths(*pointers) if pointers else no_sensitive_paths


def ensure_signer(settings: KeelSettings, environ: Mapping[str, str] | None = None) -> Signer:
    """The service's signing key: a configured key file, else ``KEEL_AUDIT_SIGNING_KEY``, else the default
    key file, generated on first start (an embedded stack must sign without a setup step)."""
    env = os.environ if environ is None else environ
    if settings.audit_signing_key_file is None and env.get(KEY_ENV):
        return load_signer(environ={KEY_ENV: env[KEY_ENV]})
    path = signing_key_file(settings)
    if not path.exists():
        if settings.audit_signing_key_file is not None:
            # A configured key that is missing is a deployment mistake; silently minting a new key
            # would fork the log's key history.
            raise AuditError(f"signing key {path} does not exist (KEEL_AUDIT_SIGNING_KEY_FILE)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = Signer.generate()
        try:
            write_private_key(signer, path)
        except FileExistsError:
            pass  # another process generated it first: use that one
        else:
            log.info("audit_key_generated", key_file=str(path), key_id=signer.key_id)
            return signer
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("audit_key_readable_by_others", key_file=str(path), mode=oct(mode & 0o777))
    return load_signer(path)
