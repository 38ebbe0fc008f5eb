"""Every Keel service opens `postgresql://` URLs with the psycopg 3 driver it installs."""

import pytest
from sqlalchemy import create_engine

from keel_shared.databases import normalize_db_url


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1/test", "postgres://u@127.0.0.1/test"])
def test_a_bare_postgresql_url_uses_psycopg_3(url: str) -> None:
    normalized = normalize_db_url(url)
    assert normalized.drivername == "postgresql+psycopg"
    create_engine(normalized)  # would raise ModuleNotFoundError (psycopg2) without the mapping


@pytest.mark.parametrize("url", ["sqlite:///x.db", "postgresql+psycopg://u@h/db", "mysql+pymysql://u@h/db"])
def test_other_urls_pass_through(url: str) -> None:
    assert normalize_db_url(url).render_as_string(hide_password=False) == url
