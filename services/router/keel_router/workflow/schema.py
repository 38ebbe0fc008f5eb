"""Published JSON Schemas of the workflow and policy files, generated from the models.

Regenerate after changing a model: `python -m keel_router.workflow.schema` (writes docs/schemas/ under
the current directory; `--check` only compares). A unit test fails while the checked-in files are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .models import Workflow
from .policy import Policy

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def workflow_json_schema() -> dict[str, Any]:
    schema = Workflow.model_json_schema(by_alias=True)
    return {"$schema": SCHEMA_DIALECT, "$id": "keel/workflow.schema.json", **schema}


def policy_json_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(by_alias=True)
    return {"$schema": SCHEMA_DIALECT, "$id": "keel/policy.schema.json", **schema}


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_files() -> dict[str, str]:
    """File name -> exact text of each published schema."""
    return {
        "workflow.schema.json": render_schema(workflow_json_schema()),
        "policy.schema.json": render_schema(policy_json_schema()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel_router.workflow.schema", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/schemas"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in schema_files().items():
        path = args.out_dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
