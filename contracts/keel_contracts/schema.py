"""JSON Schema for every message type, checked in under contracts/schemas/.

`python -m keel_contracts.schema` rewrites the files; a unit test fails when a type changed and the
files were not regenerated, so a contract never changes by accident.
"""

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from keel_contracts.commands import CancelRun, ExecuteStep, HumanInput, TriggerRun
from keel_contracts.deadletter import DeadLetter
from keel_contracts.events import EVENT_TYPES
from keel_contracts.timers import TimerFired

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def message_types() -> dict[str, type[BaseModel]]:
    types: dict[str, type[BaseModel]] = dict(EVENT_TYPES)
    types["trigger_run"] = TriggerRun
    types["execute_step"] = ExecuteStep
    types["human_input"] = HumanInput
    types["cancel_run"] = CancelRun
    types["dead_letter"] = DeadLetter
    types["timer_fired"] = TimerFired
    return types


def render() -> dict[str, str]:
    """File name -> file text for every message type."""
    out = {}
    for name, model in sorted(message_types().items()):
        version = model.model_fields["version"].default
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://keel.dev/schemas/{name}.v{version}.json"
        out[f"{name}.v{version}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(p.name)
