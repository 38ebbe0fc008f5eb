"""AsyncAPI 3.0 documents of Keel's services, generated from their FastStream apps and the contracts.

    python -m keel_dashboard.asyncapi            # rewrite docs/asyncapi/*.json (`make schemas` runs it)
    python -m keel_dashboard.asyncapi --check    # exit 1 if a checked-in document is out of date

One document per service (an AsyncAPI document describes one application). What a service receives
comes from its subscribers, typed with the pydantic contract models. What it sends is not a FastStream
publisher (services publish through the event store and `publish_with_retry`, with dedupe headers), so
it is declared here, from the topology table (`keel_contracts.topology`: each emitter's event types), as
documentation-only publishers. A consumer of run events documents one channel per filter subject of its
durable, and each such channel (one event type) is given that type's contract as its payload. Building
the apps needs no server: nothing here connects.
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import unquote

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import Field, TypeAdapter

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts import topology
from keel_contracts.deadletter import DeadLetter
from keel_contracts.envelope import Message
from keel_contracts.timers import TimerFired
from keel_shared.settings import DEFAULT_NATS_URL, KeelSettings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "asyncapi"
VERSION = "1"


def _models(emitter: str) -> tuple[type[Message], ...]:
    return tuple(route.model for route in topology.emitted_by(emitter))


def one_of(models: Sequence[type[Message]]) -> Any:
    """A discriminated union of event models (by `type`), as FastStream and pydantic document it."""
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007 (built at run time)


def _events_publisher(broker: NatsBroker, emitter: str, models: Sequence[type[Message]], what: str) -> None:
    broker.publisher(
        s.event_subject("{workflow}", "{run_id}", emitter, "{event_type}"),
        schema=one_of(models),
        title=f"run-events-{emitter}",
        description=(
            f"{what} Appended to KEEL_EVENTS with an expected last subject sequence (optimistic concurrency)"
            " and a Nats-Msg-Id; republished to keel.live.run.> once stored."
        ),
    )


def _dead_letters_publisher(broker: NatsBroker, service: str) -> None:
    broker.publisher(
        s.dlq_subject(service, "{reason}"),
        schema=DeadLetter,
        title=f"dead-letters-{service}",
        description="A message this service refused (too large, invalid, poison), kept whole in KEEL_DLQ.",
    )


def _settings(workdir: Path) -> KeelSettings:
    # Explicit values: the documents must not depend on the environment they were generated in.
    (workdir / "workflows").mkdir(exist_ok=True)
    return KeelSettings(nats_url=DEFAULT_NATS_URL, data_dir=workdir, workflows_dir=workdir / "workflows")


def router_broker(workdir: Path) -> NatsBroker:
    from keel_router.app import build
    from keel_router.catalog import WorkflowCatalog

    settings = _settings(workdir)
    broker = build(settings, WorkflowCatalog(settings.workflows_dir)).spec_broker
    _events_publisher(broker, s.ROUTER, _models(s.ROUTER), "What the router decides about a run.")
    broker.publisher(
        t.schedule_subject("{workflow}", "{run_id}", "{timer_id}"),
        schema=TimerFired,
        title="timer-schedule",
        description="A durable timer (a NATS message schedule on KEEL_TIMERS); fires a copy to keel.timer.fire.",
    )
    _dead_letters_publisher(broker, s.ROUTER)
    return broker


def executor_broker(workdir: Path) -> NatsBroker:
    from keel_executor.app import build
    from keel_executor.tools.registry import ToolRegistry

    broker = build(_settings(workdir), ToolRegistry.from_entry_points()).spec_broker
    _events_publisher(broker, s.EXECUTOR, _models(s.EXECUTOR), "How one attempt of a tool step ended.")
    _dead_letters_publisher(broker, s.EXECUTOR)
    return broker


def approval_broker(workdir: Path) -> NatsBroker:
    from keel_approval.app import build
    from keel_approval.timers import ApprovalExpiryDue

    broker = build(_settings(workdir)).spec_broker
    _events_publisher(broker, s.APPROVAL, _models(s.APPROVAL), "An approval's decision (or its expiry).")
    broker.publisher(
        t.approval_schedule_subject("{workflow}", "{run_id}", "{key}"),
        schema=ApprovalExpiryDue,
        title="approval-expiry-schedule",
        description="The expiry timer of one pending approval (a message schedule on KEEL_TIMERS).",
    )
    _dead_letters_publisher(broker, s.APPROVAL)
    return broker


SERVICES: dict[str, tuple[Callable[[Path], NatsBroker], str]] = {
    "router": (router_broker, "Starts runs from triggers, decides every next step, keeps the run-state view."),
    "executor": (executor_broker, "Runs tool steps, one attempt per command, and records each outcome."),
    "approval": (approval_broker, "Records approval requests, lets approvers decide, publishes decisions."),
}


def _type_event_channels(doc: dict[str, Any]) -> None:
    """Give every channel of one event type (a filter subject of a run-event durable) that type's
    contract as its payload: the subscriber's own annotation is what its durable delivers as a whole."""
    components = doc["components"]
    by_subject = {route.subject: route.model for route in topology.EVENTS}
    for channel in doc["channels"].values():
        model = by_subject.get(channel["address"])
        if model is None:
            continue
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components["schemas"].setdefault(name, definition)
        components["schemas"].setdefault(model.__name__, schema)
        for ref in channel["messages"].values():
            message = components["messages"][_unref(ref["$ref"])]
            stale = _unref(message["payload"].get("$ref", ""))
            message["payload"] = {"$ref": f"#/components/schemas/{model.__name__}"}
            if stale and stale != model.__name__ and not _referenced(doc, stale):
                components["schemas"].pop(stale, None)


def _unref(ref: str) -> str:
    """The component name a local `$ref` points at (FastStream percent-encodes `>` and `*`)."""
    return unquote(ref.rsplit("/", 1)[-1])


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield _unref(value)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _referenced(doc: dict[str, Any], schema_name: str) -> bool:
    return schema_name in set(_refs(doc))


def generate(service: str, workdir: Path) -> dict[str, Any]:
    make, description = SERVICES[service]
    spec = AsyncAPI(
        make(workdir),
        title=f"Keel {service}",
        version=VERSION,
        description=f"{description} Subject layout: docs/events.md and docs/subjects/.",
        schema_version="3.0.0",
    )
    doc: dict[str, Any] = spec.to_specification().to_jsonable()
    _type_event_channels(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def generate_all() -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="keel-asyncapi-") as tmp:
        return {f"{service}.json": render(generate(service, Path(tmp))) for service in SERVICES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report documents that are out of date")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate_all().items():
        path = args.out / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
