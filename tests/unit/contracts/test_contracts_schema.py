"""The checked-in JSON Schema files are exactly what the contract types produce now."""

from __future__ import annotations

import json
from pathlib import Path

from keel_contracts import schema
from keel_contracts.events import EVENT_TYPES

REGENERATE = "run `python -m keel_contracts.schema` and commit contracts/schemas/"


def schema_drift(directory: Path) -> list[str]:
    """How the schema files in `directory` differ from `schema.render()`; empty when up to date."""
    expected = schema.render()
    present = {p.name for p in directory.glob("*.json")}
    problems = [f"{name}: missing" for name in sorted(set(expected) - present)]
    problems += [f"{name}: no message type produces it (stale)" for name in sorted(present - set(expected))]
    problems += [
        f"{name}: differs from the current type"
        for name in sorted(set(expected) & present)
        if (directory / name).read_text() != expected[name]
    ]
    return problems


def test_checked_in_json_schemas_match_the_contract_types():
    drift = schema_drift(schema.SCHEMA_DIR)
    assert not drift, "contracts/schemas is out of date:\n  " + "\n  ".join(drift) + f"\nTo fix: {REGENERATE}."


def test_the_drift_check_notices_a_changed_a_missing_and_a_stale_schema_file(tmp_path: Path):
    schema.write(tmp_path)
    assert schema_drift(tmp_path) == []
    changed = tmp_path / "run_completed.v1.json"
    doc = json.loads(changed.read_text())
    doc["properties"]["body"]["title"] = "edited"
    changed.write_text(json.dumps(doc))
    (tmp_path / "step_failed.v1.json").unlink()
    (tmp_path / "run_paused.v1.json").write_text("{}")

    assert schema_drift(tmp_path) == [
        "step_failed.v1.json: missing",
        "run_paused.v1.json: no message type produces it (stale)",
        "run_completed.v1.json: differs from the current type",
    ]


def test_every_event_type_and_command_has_a_versioned_schema_with_its_id():
    rendered = schema.render()
    # run_started is at version 2 (it carries the run's first step: decision 025).
    versions = {"run_started": 2}
    for name in [*EVENT_TYPES, "trigger_run", "execute_step", "dead_letter", "timer_fired"]:
        file = f"{name}.v{versions.get(name, 1)}.json"
        doc = json.loads(rendered[file])
        assert doc["$id"] == f"https://keel.dev/schemas/{file}"
        assert doc["properties"]["type"]["const"] == name
