"""Entry point: `python -m keel_executor` (or `keel-executor`)."""

from keel_shared.service import setup

from keel_executor.app import build


def main() -> None:
    build(setup("executor")).run()


if __name__ == "__main__":
    main()
