"""docs/asyncapi/ is generated from the services' FastStream apps and the contracts; it must be current
(regenerate with `make schemas`)."""

import json
from pathlib import Path

from keel_contracts import subjects as s
from keel_dashboard import asyncapi


def test_checked_in_asyncapi_documents_are_current() -> None:
    generated = asyncapi.generate_all()
    assert set(generated) == {"router.json", "executor.json", "approval.json"}
    stale = [name for name, text in generated.items() if (asyncapi.DOCS / name).read_text() != text]
    assert not stale, f"out of date: {stale}; run `make schemas` (python -m keel_dashboard.asyncapi)"


def test_documents_are_asyncapi_3_with_typed_payloads_everywhere() -> None:
    for path in sorted(Path(asyncapi.DOCS).glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["asyncapi"] == "3.0.0", path.name
        schemas = doc["components"]["schemas"]
        assert "EmptyPayload" not in schemas, f"{path.name}: a channel has no payload schema"
        for name, message in doc["components"]["messages"].items():
            ref = message["payload"]["$ref"].rsplit("/", 1)[-1]
            assert ref in schemas, f"{path.name}: {name} -> {ref}"
        actions = {op["action"] for op in doc["operations"].values()}
        assert actions == {"send", "receive"}, path.name


def test_the_router_outcome_channel_is_documented_from_the_contracts() -> None:
    doc = json.loads((asyncapi.DOCS / "router.json").read_text())
    outcome = doc["components"]["schemas"]["RouterOutcome"]
    kinds = {ref["$ref"].rsplit("/", 1)[-1] for ref in outcome["oneOf"]}
    assert kinds == {"StepSucceeded", "StepFailed", "ApprovalGranted", "ApprovalDenied", "ApprovalExpired"}
    channels = [c for c in doc["channels"].values() if c["address"] == s.emitter_filter(s.EXECUTOR)]
    assert len(channels) == 1


def test_every_run_event_type_is_sent_by_exactly_one_service() -> None:
    emitted = asyncapi.ROUTER_EVENTS + asyncapi.EXECUTOR_EVENTS + asyncapi.APPROVAL_EVENTS
    assert sorted(cls.__name__ for cls in emitted) == sorted(cls.__name__ for cls in set(emitted))
    from keel_contracts.events import EVENT_TYPES

    assert set(emitted) == set(EVENT_TYPES.values())
