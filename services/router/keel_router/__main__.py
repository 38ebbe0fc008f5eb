"""Entry point: `python -m keel_router` (or `keel-router`)."""

import sys

from keel_router.app import build
from keel_router.workflow.errors import WorkflowError
from keel_shared.service import setup


def main() -> None:
    settings = setup("router")
    try:
        runtime = build(settings)
    except WorkflowError as exc:
        # A broken policy file: say where, one located problem per line, and stop (exit 2, a configuration
        # error) rather than run without the approvals it demands.
        for problem in exc.problems:
            print(f"keel-router: invalid policy: {problem}", file=sys.stderr)
        sys.exit(2)
    runtime.run()


if __name__ == "__main__":
    main()
