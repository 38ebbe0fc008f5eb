"""Configuration from the environment (`KEEL_*`), one settings object for every Keel process."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from keel_contracts.approvals import DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES

#: The embedded default (`keel up`) listens here; chosen away from 4222 so it never collides with a
#: system nats-server.
DEFAULT_NATS_URL = "nats://127.0.0.1:4244"


class KeelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore")

    nats_url: str = DEFAULT_NATS_URL
    # NKEY seed file of this process's identity; unset means the server has no auth (embedded default).
    nats_nkey_seed_file: Path | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    tenant: str = "default"

    data_dir: Path = Path(".keel")
    workflows_dir: Path = Path("workflows")
    instance_id: str | None = None

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # 0 disables the metrics/health endpoint; `keel up` gives every service its own port.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # How often a service polls the server for its consumers' lag (keel_consumer_*_messages).
    metrics_poll_seconds: float = Field(default=5.0, gt=0)

    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    # How many times a message may be delivered before it is dead-lettered as poison.
    max_deliveries: int = Field(default=10, ge=1)
    # Delays (seconds) between redeliveries after an unexpected handler error, by delivery count.
    redelivery_backoff: list[float] = [0.5, 2, 5, 15, 30, 60]
    publish_timeout: float = Field(default=5.0, gt=0)
    # Total time a publisher keeps retrying one publish (same Nats-Msg-Id) across a leader election.
    publish_retry_budget: float = Field(default=30.0, gt=0)

    # Stream provisioning (used by `keel init` / `keel up` only).
    replicas: int = Field(default=1, ge=1, le=5)
    dedupe_window_seconds: float = Field(default=600, gt=0)
    events_max_bytes: int = -1
    claims_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    ack_wait_seconds: float = Field(default=30, gt=0)

    # Executor
    # Tool calls one executor process runs at once. They wait on systems of record and on the broker's
    # acknowledgements, not on this process's CPU: with 8, the bench showed scheduled steps queueing while
    # every slot waited (decision 025).
    executor_concurrency: int = Field(default=64, ge=1, le=256)
    default_step_timeout: float = Field(default=60, gt=0)
    heartbeat_seconds: float = Field(default=10, gt=0)

    # Router
    # Messages each router consumer handles at once; a handler mostly waits for its appends' acks.
    router_concurrency: int = Field(default=128, ge=1, le=1024)
    # Runs of one tenant not yet done, failed or cancelled (parked and blocked runs count); a trigger that
    # would start another is refused (`too_many_runs`). 0: no limit. See docs/limits.md.
    max_runs_in_flight: int = Field(default=10_000, ge=0)
    # The policy file (approval classes, caps); unset means the built-in default policy.
    policy_file: Path | None = None

    # Webhook ingress (`python -m keel_router.ingress`)
    ingress_http_host: str = "127.0.0.1"
    ingress_http_port: int = Field(default=8419, ge=0, le=65535)
    # JSON file of per-source settings (secret, scheme, intent key path); see docs/workflows.md.
    ingress_sources_file: Path | None = None
    # Signed requests older or newer than this are refused; signatures are remembered this long.
    webhook_window_seconds: float = Field(default=300, gt=0)
    webhook_replay_ttl_seconds: float = Field(default=600, gt=0)

    # Approval service
    # The inbox and API port; `keel up` gives it the stack's front port (--http-port).
    approval_http_port: int = Field(default=8420, ge=0, le=65535)
    approval_http_host: str = "127.0.0.1"
    # SQLAlchemy URL of the approval store; unset means SQLite at <data_dir>/approvals.db.
    approval_db_url: str | None = None
    # Mark the inbox's session cookie Secure: set it whenever the inbox is served over HTTPS.
    approval_cookie_secure: bool = False
    approval_session_hours: float = Field(default=8, gt=0, le=24 * 30)
    # The approval service's Ed25519 key for signing decisions (PEM, 0600); unset means
    # <data_dir>/keys/approval-signing.key, created by `keel init` or the service's first start.
    approval_signing_key_file: Path | None = None
    # The keys whose signed grants the router and executors accept; unset means
    # <data_dir>/keys/approval-keyring.json (docs/security.md, "Signed decisions").
    approval_keyring_file: Path | None = None
    # The router's Ed25519 key for signing the writes it schedules (PEM, 0600); unset means
    # <data_dir>/keys/router-signing.key, created by `keel init` or the router's first start.
    router_signing_key_file: Path | None = None
    # The keys whose signed write schedules executors accept; unset means <data_dir>/keys/router-keyring.json.
    router_keyring_file: Path | None = None
    # Wrong approver tokens one client may send in `approval_guess_window_seconds` before it gets 429.
    approval_max_failed_logins: int = Field(default=10, ge=1)
    approval_guess_window_seconds: float = Field(default=60, gt=0)
    # Largest payload one approval request may carry (canonical JSON bytes). The router blocks a run
    # before asking for more; the approval service denies a larger request it is given.
    max_approval_payload_bytes: int = Field(default=DEFAULT_MAX_APPROVAL_PAYLOAD_BYTES, ge=1)

    # Audit service (docs/audit.md)
    # Segments, keyring and erasable payloads; unset means <data_dir>/audit.
    audit_dir: Path | None = None
    # Ed25519 signing key (PEM); unset means <data_dir>/audit-keys/signing.pem, generated (0600) on first
    # start. KEEL_AUDIT_SIGNING_KEY (a base64 seed) is used instead when set and this is unset.
    audit_signing_key_file: Path | None = None
    # Where sealed segments go: files in <audit_dir>/segments, or a JetStream object store bucket.
    audit_store: Literal["directory", "object_store"] = "directory"
    audit_bucket: str = Field(default="KEEL_AUDIT", pattern=r"^[A-Za-z0-9_-]+$")
    audit_segment_max_records: int = Field(default=1024, ge=1, le=100_000)
    audit_segment_max_age_seconds: float = Field(default=60, gt=0)
    # An idle writer seals an empty, signed heartbeat segment this often; unset means the max age.
    audit_heartbeat_seconds: float | None = Field(default=None, gt=0)
    # How often the service re-verifies the whole log for its metrics; 0 disables.
    audit_verify_interval_seconds: float = Field(default=600, ge=0)
    # JSON pointers (RFC 6901) stored as salted commitments in every event, clear values kept apart.
    audit_sensitive_pointers: list[str] = []


def load_settings(**overrides: object) -> KeelSettings:
    return KeelSettings(**overrides)  # type: ignore[arg-type]
