"""docs/asyncapi/ is generated from the services' FastStream apps and the contracts; it must be current
(regenerate with `make schemas`)."""

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from keel_contracts import topology
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


def _channels(doc: dict[str, Any]) -> dict[str, str]:
    """address -> payload component name, for every channel of a document."""
    out = {}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][unquote(ref["$ref"].rsplit("/", 1)[-1])]
            out[channel["address"]] = message["payload"]["$ref"].rsplit("/", 1)[-1]
    return out


def test_each_consumer_documents_every_filter_subject_of_its_durable_with_that_events_contract() -> None:
    for service in ("router", "executor", "approval"):
        channels = _channels(json.loads((asyncapi.DOCS / f"{service}.json").read_text()))
        for durable in topology.durables_of(service):
            for subject in durable.filter_subjects:
                assert subject in channels, f"{service}: {durable.name} filters {subject}, not documented"
        by_subject = {route.subject: route.model.__name__ for route in topology.EVENTS}
        for address, payload in channels.items():
            if address in by_subject:
                assert payload == by_subject[address], (service, address, payload)


def test_every_run_event_type_is_documented_as_sent_by_its_rightful_emitter_only() -> None:
    sent: dict[str, set[str]] = {}
    for service in ("router", "executor", "approval"):
        doc = json.loads((asyncapi.DOCS / f"{service}.json").read_text())
        for name, message in doc["components"]["messages"].items():
            if name.startswith("run-events-"):
                schema = doc["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[-1]]
                refs = schema.get("oneOf") or [{"$ref": message["payload"]["$ref"]}]
                sent[service] = {ref["$ref"].rsplit("/", 1)[-1] for ref in refs}
    for route in topology.EVENTS:
        owners = [service for service, models in sent.items() if route.model.__name__ in models]
        assert owners == [route.emitter], (route.type, owners)
