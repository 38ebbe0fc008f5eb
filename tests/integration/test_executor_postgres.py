"""The executor's database tools on PostgreSQL, reached with a plain `postgresql://` URL."""

import asyncio
from collections.abc import Iterator

import pytest

from keel_executor.tools.demo import ledger, ledger_counts
from keel_executor.tools.registry import ToolContext
from tests.conftest import postgres_schema_url

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    # As an operator would write it: no driver named (Keel installs psycopg 3, not psycopg2).
    for url in postgres_schema_url("keel_executor"):
        yield url.replace("postgresql+psycopg://", "postgresql://", 1)


def context(key: str) -> ToolContext:
    return ToolContext(
        run_id="r-pg",
        workflow="demo",
        step_id="post",
        attempt=1,
        tenant="default",
        correlation_id="c" * 32,
        idempotency_key=key,
        timeout_seconds=10,
        data_dir=".",
    )


async def test_the_demo_ledger_writes_once_per_key_on_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_DEMO_LEDGER_URL", postgres_url)
    first, again = await asyncio.gather(
        ledger(context("k-1"), {"account": "a", "amount": 5}), ledger(context("k-1"), {"account": "a", "amount": 5})
    )
    assert sorted([first["replayed"], again["replayed"]]) == [False, True]
    assert ledger_counts(postgres_url, "r-pg") == {"invocations": 2, "effects": 1}
