"""Entry point: `python -m keel_dashboard` (or `keel-dashboard`), the live dashboard process."""

from keel_dashboard.app import build
from keel_dashboard.settings import DashboardSettings
from keel_shared.logging import configure_logging


def main() -> None:
    settings = DashboardSettings()
    configure_logging("dashboard", settings.log_level, settings.log_format)
    build(settings).run()


if __name__ == "__main__":
    main()
