"""The OpenAPI document of the approval API, as checked in at docs/approval-openapi.json.

Regenerate with `python -m keel_approval.openapi > docs/approval-openapi.json` (a test fails when the
checked-in copy is stale)."""

import json
from typing import Any

from keel_approval.webapp import create_app


def document() -> dict[str, Any]:
    return create_app(None).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
