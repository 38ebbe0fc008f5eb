"""Webhook ingress rules, free of HTTP and NATS: per-source settings, signature schemes, the replay
window and the intent key a request maps to.

Two signature schemes:

- `slack`: Slack's signing secret scheme. `X-Slack-Request-Timestamp: T`, and
  `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:T:<raw body>")>`.
- `keel`: a generic scheme for any sender. `X-Keel-Timestamp: T` (Unix seconds), and
  `X-Keel-Signature: sha256=<hex HMAC-SHA256(secret, "T.<raw body>")>`.

A request whose timestamp is outside the window (default 5 minutes either way) is stale; a signature
seen before inside the window is a replay. Both are refused before anything starts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from keel_contracts.subjects import TOKEN_RE

Scheme = Literal["slack", "keel"]


class SourceConfig(BaseModel):
    """How one source signs its requests and where its intent key is."""

    model_config = ConfigDict(extra="forbid")

    scheme: Scheme = "keel"
    # The environment variable holding the signing secret (secrets stay out of files). Default:
    # KEEL_WEBHOOK_SECRET_<SOURCE> (upper case, '-' as '_').
    secret_env: str | None = None
    # Where the intent key is: "header:<Name>" or "body:<dotted.path>". Default: the Idempotency-Key
    # header, else the body's `intent_key` field (for slack: the body's `event_id`).
    intent_key: str | None = None
    # The part of the JSON body that becomes the trigger input (dotted path); default the whole body.
    input_path: str | None = None
    # Workflows this source may start; empty means any.
    workflows: list[str] = Field(default_factory=list)


class WebhookRefused(Exception):
    """A request the ingress refuses: `status` is the HTTP status, `code` a short reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Source:
    name: str
    config: SourceConfig
    secret: bytes


def secret_env_name(source: str) -> str:
    return "KEEL_WEBHOOK_SECRET_" + re.sub(r"[^A-Z0-9]", "_", source.upper())


def load_sources(path: Path | None) -> dict[str, SourceConfig]:
    """Per-source settings from a JSON file `{"<source>": {...SourceConfig}}` (none: every source uses the
    defaults, and `slack` the slack scheme)."""
    if path is None:
        return {}
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object of sources")
    return {name: SourceConfig.model_validate(cfg) for name, cfg in doc.items()}


def resolve_source(name: str, configured: Mapping[str, SourceConfig], env: Mapping[str, str] | None = None) -> Source:
    """The source's settings and secret; a source without a secret is unknown (404), never unsigned-OK."""
    env = os.environ if env is None else env
    if not TOKEN_RE.fullmatch(name):
        raise WebhookRefused(404, "unknown_source", f"no webhook source {name!r}")
    config = configured.get(name) or SourceConfig(scheme="slack" if name == "slack" else "keel")
    secret = env.get(config.secret_env or secret_env_name(name), "")
    if not secret:
        raise WebhookRefused(404, "unknown_source", f"no webhook source {name!r} is configured (no signing secret)")
    return Source(name, config, secret.encode())


def sign(scheme: Scheme, secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value a sender computes (also what the tests and docs use)."""
    if scheme == "slack":
        digest = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
        return f"v0={digest}"
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_headers(scheme: Scheme) -> tuple[str, str]:
    """(signature header, timestamp header) of a scheme."""
    if scheme == "slack":
        return "X-Slack-Signature", "X-Slack-Request-Timestamp"
    return "X-Keel-Signature", "X-Keel-Timestamp"


def verify(source: Source, headers: Mapping[str, str], body: bytes, now: float, window: float) -> str:
    """Check a request's signature and timestamp; returns the signature (what replay detection keys on)."""
    sig_header, ts_header = signature_headers(source.config.scheme)
    signature, timestamp = headers.get(sig_header), headers.get(ts_header)
    if not signature or not timestamp:
        raise WebhookRefused(401, "unsigned", f"missing {sig_header} or {ts_header}")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRefused(401, "unsigned", f"{ts_header} must be Unix seconds") from None
    expected = sign(source.config.scheme, source.secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRefused(401, "bad_signature", f"{sig_header} does not match the body and timestamp")
    # Checked after the signature, so an unauthenticated caller learns nothing about the clock.
    if abs(now - sent_at) > window:
        raise WebhookRefused(403, "stale", f"{ts_header} is {int(now - sent_at)}s away from now (window {window:g}s)")
    return signature


def replay_key(source: str, signature: str) -> str:
    """The replay-store key of a signature (KV keys: letters, digits, '-', '_', '.')."""
    return hashlib.sha256(f"{source}\x1f{signature}".encode()).hexdigest()


def _path(doc: Any, path: str) -> Any:
    cur = doc
    for seg in path.split("."):
        if isinstance(cur, Mapping) and seg in cur:
            cur = cur[seg]
        else:
            return None
    return cur


def trigger_input(source: Source, doc: Any) -> dict[str, Any]:
    value = _path(doc, source.config.input_path) if source.config.input_path else doc
    if not isinstance(value, dict):
        where = source.config.input_path or "the body"
        raise WebhookRefused(422, "invalid_input", f"{where} must be a JSON object")
    return value


def intent_key(source: Source, headers: Mapping[str, str], doc: Any) -> str | None:
    """The request's intent key, or None (every request is then its own intent)."""
    spec = source.config.intent_key
    if spec is None:
        header = headers.get("Idempotency-Key")
        if header:
            return header
        spec = "body:event_id" if source.config.scheme == "slack" else "body:intent_key"
    kind, _, where = spec.partition(":")
    value = headers.get(where) if kind == "header" else _path(doc, where) if kind == "body" else None
    if kind not in ("header", "body"):
        raise ValueError(f"intent_key must be header:<Name> or body:<path>, got {spec!r}")
    if value is None or value == "":
        return None
    if not isinstance(value, str | int):
        raise WebhookRefused(422, "invalid_intent_key", f"the intent key at {spec} must be a string")
    return str(value)
