"""Log context bound around a block: visible inside, restored exactly after, nested or not."""

import asyncio

import pytest
import structlog

from keel_shared.logging import bound_context


def bound() -> dict[str, object]:
    return structlog.contextvars.get_contextvars()


def test_values_are_bound_inside_the_block_and_gone_after_it():
    structlog.contextvars.clear_contextvars()
    with bound_context(run_id="r1", step_id="a"):
        assert bound() == {"run_id": "r1", "step_id": "a"}
    assert bound() == {}


def test_a_nested_block_restores_the_outer_values_it_overrode():
    structlog.contextvars.clear_contextvars()
    with bound_context(run_id="r1", subject="keel.x"):
        with bound_context(run_id="r2", step_id="b"):
            assert bound() == {"run_id": "r2", "subject": "keel.x", "step_id": "b"}
        assert bound() == {"run_id": "r1", "subject": "keel.x"}
    assert bound() == {}


def test_values_are_restored_when_the_block_raises():
    structlog.contextvars.clear_contextvars()
    with pytest.raises(RuntimeError), bound_context(run_id="r1"):
        raise RuntimeError("boom")
    assert bound() == {}


async def test_concurrent_handlers_do_not_see_each_others_values():
    structlog.contextvars.clear_contextvars()
    seen: dict[str, object] = {}

    async def handle(run_id: str) -> None:
        with bound_context(run_id=run_id):
            await asyncio.sleep(0)
            seen[run_id] = bound()["run_id"]

    await asyncio.gather(handle("r1"), handle("r2"))
    assert seen == {"r1": "r1", "r2": "r2"}
