"""Every Keel service opens `postgresql://` URLs with the psycopg 3 driver it installs."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect

from keel_shared.databases import create_tables, normalize_db_url


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1/test", "postgres://u@127.0.0.1/test"])
def test_a_bare_postgresql_url_uses_psycopg_3(url: str) -> None:
    normalized = normalize_db_url(url)
    assert normalized.drivername == "postgresql+psycopg"
    create_engine(normalized)  # would raise ModuleNotFoundError (psycopg2) without the mapping


@pytest.mark.parametrize("url", ["sqlite:///x.db", "postgresql+psycopg://u@h/db", "mysql+pymysql://u@h/db"])
def test_other_urls_pass_through(url: str) -> None:
    assert normalize_db_url(url).render_as_string(hide_password=False) == url


def test_tables_created_by_many_creators_at_once_are_created_without_an_error(tmp_path: Path) -> None:
    # Found by the bad-input suite: eight executor threads posting their first demo-ledger entries at
    # once; a creator could lose the race on one table, then on the next, and fail on its second pass.
    metadata = MetaData()
    for name in ("a", "b", "c", "d", "e", "f"):
        Table(name, metadata, Column("id", Integer, primary_key=True))
    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        start = threading.Barrier(8)

        def create(url: str = url, start: threading.Barrier = start) -> None:
            engine = create_engine(url, connect_args={"timeout": 30})
            start.wait()
            create_tables(metadata, engine)
            engine.dispose()

        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(create) for _ in range(8)]:
                future.result()
        assert set(inspect(create_engine(url)).get_table_names()) == set(metadata.tables)
