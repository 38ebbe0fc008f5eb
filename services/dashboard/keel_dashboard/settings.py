"""The dashboard's settings: Keel's shared `KEEL_*` settings plus its own HTTP listener and links."""

from pydantic import Field

from keel_shared.settings import KeelSettings


class DashboardSettings(KeelSettings):
    # `keel up` gives the dashboard a port of its own next to the services' metrics ports.
    dashboard_http_host: str = "127.0.0.1"
    dashboard_http_port: int = Field(default=8430, ge=0, le=65535)
    # Base URL of the approval inbox (KEEL_APPROVAL_URL); unset hides the inbox links.
    approval_url: str | None = None
    # The most runs one board snapshot lists (counts always cover every run that matches the filter).
    dashboard_max_rows: int = Field(default=500, ge=1, le=10_000)
