"""The SQL adapter's behaviour on PostgreSQL: the same tests as on SQLite (tests/unit/executor/
test_executor_sql_adapter.py), run here against a fresh schema of a real server through a plain
`postgresql://` URL, as an operator would configure it."""

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import postgres_schema_url
from tests.unit.executor.test_executor_sql_adapter import (
    test_a_failed_write_leaves_no_ledger_row_so_a_fixed_retry_runs,
    test_bad_input_is_permanent,
    test_execute_runs_a_statement_with_bound_parameters_once_per_key,
    test_insert_writes_one_row_and_a_repeat_with_the_same_key_is_a_no_op,
    test_query_returns_rows_as_json_and_never_commits,
    test_the_read_back_finds_a_committed_write_by_its_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

# Collected here a second time, with this module's `db` fixture: the same behaviour, another database.
__all__ = [
    "test_a_failed_write_leaves_no_ledger_row_so_a_fixed_retry_runs",
    "test_bad_input_is_permanent",
    "test_execute_runs_a_statement_with_bound_parameters_once_per_key",
    "test_insert_writes_one_row_and_a_repeat_with_the_same_key_is_a_no_op",
    "test_query_returns_rows_as_json_and_never_commits",
    "test_the_read_back_finds_a_committed_write_by_its_key",
]


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for url in postgres_schema_url("keel_sql"):
        with create_engine(url).begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE entries (id SERIAL PRIMARY KEY, account TEXT NOT NULL UNIQUE,"
                    " amount INTEGER NOT NULL, write_key TEXT)"
                )
            )
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        monkeypatch.setenv("KEEL_SQL_BOOKS_URL", plain)
        yield plain
