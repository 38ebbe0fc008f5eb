"""Entry point: `python -m keel_audit` (or `keel-audit`), the audit service process."""

import sys

from keel_audit.service import build
from keel_shared.service import setup


def main() -> None:
    runtime, service = build(setup("audit"))
    runtime.run()
    if service.failed is not None:
        # A log the writer refused to continue (wrong key, corrupt head, a rival writer): exit non-zero
        # so a supervisor shows it instead of counting a clean stop.
        sys.exit(1)


if __name__ == "__main__":
    main()
