"""The published JSON Schemas match the models, and they accept the examples."""

import json

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from workflow_testkit import EXAMPLES, REPO

from keel_router.workflow.schema import main, schema_files

SCHEMAS = REPO / "docs" / "schemas"


@pytest.mark.parametrize("name", sorted(schema_files()))
def test_checked_in_schema_is_up_to_date(name: str) -> None:
    current = (SCHEMAS / name).read_text(encoding="utf-8")
    assert current == schema_files()[name], (
        f"docs/schemas/{name} is stale: run `python -m keel_router.workflow.schema` from the repo root"
    )


def test_regenerate_writes_then_check_passes(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "schemas"  # type: ignore[operator]
    assert main(["--out-dir", str(out), "--check"]) == 1
    assert main(["--out-dir", str(out)]) == 0
    assert main(["--out-dir", str(out), "--check"]) == 0
    (out / "policy.schema.json").write_text("{}")
    assert main(["--out-dir", str(out), "--check"]) == 1


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate_against_the_published_schema(example: str) -> None:
    schema = json.loads((SCHEMAS / "workflow.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = yaml.safe_load((EXAMPLES / example).read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_published_schema_rejects_a_typo() -> None:
    schema = json.loads((SCHEMAS / "workflow.schema.json").read_text())
    bad = {"name": "w", "steps": [{"id": "a", "kind": "tool", "tool": "t", "retyr": []}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)
