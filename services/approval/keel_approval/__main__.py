"""Entry point: `python -m keel_approval` (or `keel-approval`)."""

from keel_approval.app import build
from keel_shared.service import setup


def main() -> None:
    build(setup("approval")).run()


if __name__ == "__main__":
    main()
