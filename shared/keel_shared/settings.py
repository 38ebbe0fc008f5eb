"""Configuration from the environment (`KEEL_*`), one settings object for every Keel process."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    executor_concurrency: int = Field(default=8, ge=1, le=256)
    default_step_timeout: float = Field(default=60, gt=0)
    heartbeat_seconds: float = Field(default=10, gt=0)

    # Router
    router_concurrency: int = Field(default=32, ge=1, le=1024)


def load_settings(**overrides: object) -> KeelSettings:
    return KeelSettings(**overrides)  # type: ignore[arg-type]
