"""`python -m keel_sandbox --host H --port P --db-url URL`: the `serve` command on its own."""

from __future__ import annotations

import typer

from keel_sandbox.cli import serve


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
