"""Entry point: `python -m keel_executor` (or `keel-executor`)."""

from keel_executor.app import build
from keel_shared.service import setup


def main() -> None:
    build(setup("executor")).run()


if __name__ == "__main__":
    main()
