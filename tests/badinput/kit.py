"""Helpers for the bad-input tests: the stack they share, publishing garbage, collecting dead letters,
and checking that every service is still alive and healthy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from keel_contracts import subjects as s
from keel_contracts.codec import decode
from keel_contracts.deadletter import DeadLetter
from tests.conftest import StackHandle

#: Webhook sources the stack's ingress knows (the secret is each source's KEEL_WEBHOOK_SECRET_<SOURCE>).
WEBHOOK_SECRET = "badinput-webhook-secret"
SLACK_SECRET = "badinput-slack-secret"


@dataclass
class BadInputStack:
    """Every Keel service on one nats-server, plus what the tests need to reach them."""

    handle: StackHandle
    #: An approver holding `finance` (API token), and one holding nothing the requests ask for.
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def nats_url(self) -> str:
        return self.handle.nats_url

    def url(self, service: str) -> str:
        """Base URL of a service's HTTP side (approval and dashboard apps, ingress)."""
        stack = self.handle.stack
        if service == "approval":
            assert stack.approval_url is not None
            return stack.approval_url
        if service == "dashboard":
            assert stack.dashboard_url is not None
            return stack.dashboard_url.rstrip("/")
        return self.metrics_url(service)

    def metrics_url(self, label: str) -> str:
        return f"http://127.0.0.1:{self.handle.stack.children[label].spec.metrics_port}"

    @property
    def labels(self) -> list[str]:
        return list(self.handle.stack.children)


async def assert_all_alive_and_healthy(stack: BadInputStack) -> None:
    """Every process still runs (nothing restarts them here) and answers /healthz with 200 and `ok`."""
    dead = {label: child.proc.poll() for label, child in stack.handle.stack.children.items() if child.proc.poll()}
    assert not dead, f"services exited: {dead}\n{stack.handle.logs()}"
    async with httpx.AsyncClient(timeout=10) as http:
        for label in stack.labels:
            response = await http.get(stack.metrics_url(label) + "/healthz")
            assert response.status_code == 200, f"{label}: {response.status_code} {response.text}"
            assert response.json()["status"] == "ok", f"{label}: {response.text}"
        for service in ("approval", "dashboard"):
            response = await http.get(stack.url(service) + "/healthz")
            assert response.status_code == 200 and response.json()["status"] == "ok", f"{service}: {response.text}"


class DeadLetters:
    """Every dead letter stored in KEEL_DLQ, by the stream and sequence of the message it refused."""

    def __init__(self) -> None:
        self.by_origin: dict[tuple[str | None, int | None], DeadLetter] = {}
        self.unreadable: list[bytes] = []
        self._sub: Any = None

    async def start(self, nc: Client) -> None:
        async def collect(msg: Msg) -> None:
            try:
                letter = decode(DeadLetter, msg.data, max_bytes=4 * 1024 * 1024)
            except ValueError:
                self.unreadable.append(msg.data)
                return
            self.by_origin[(letter.stream, letter.stream_seq)] = letter

        self._sub = await nc.jetstream().subscribe(
            s.DLQ_ALL,
            stream=s.DLQ_STREAM,
            cb=collect,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )

    def of(self, stream: str, seq: int) -> DeadLetter | None:
        return self.by_origin.get((stream, seq))


def message_id() -> str:
    return f"badinput-{uuid.uuid4().hex}"


async def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of a metric's samples (those with `labels`, if given) on a /metrics page."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url + "/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def short(items: Iterable[str], limit: int = 15) -> str:
    items = list(items)
    more = f"\n... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n".join(items[:limit]) + more


async def gather_limited(coros: Iterable[Any], limit: int = 16) -> list[Any]:
    """Run coroutines with at most `limit` at a time (the machine is small)."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))
