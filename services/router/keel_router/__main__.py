"""Entry point: `python -m keel_router` (or `keel-router`)."""

from keel_router.app import build
from keel_shared.service import setup


def main() -> None:
    build(setup("router")).run()


if __name__ == "__main__":
    main()
