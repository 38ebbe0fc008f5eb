"""Fixtures for the router's pure core: a fixed clock, a seeded engine and a run log."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

import pytest
from pydantic import JsonValue
from router_testkit import T0, RunLog

from keel_contracts.commands import TriggerRun
from keel_router.engine import Engine
from keel_shared.triggers import build_trigger


@pytest.fixture
def now() -> datetime:
    return T0


@pytest.fixture
def engine() -> Engine:
    return Engine(lambda: T0, random.Random(0))


@pytest.fixture
def run_log() -> RunLog:
    return RunLog()


TriggerFactory = Callable[..., TriggerRun]


@pytest.fixture
def make_trigger() -> TriggerFactory:
    def make(
        workflow: str,
        input: dict[str, JsonValue] | None = None,
        intent_key: str = "order-1",
        trigger_id: str | None = None,
    ) -> TriggerRun:
        return build_trigger(workflow, input or {}, intent_key, source="test", trigger_id=trigger_id)

    return make
