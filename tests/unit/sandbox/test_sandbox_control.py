from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keel_sandbox.cli import app as cli_app
from keel_sandbox.db import Database, normalize_db_url
from keel_sandbox.settings import DEFAULT_DB_URL, DEFAULT_PORT, SandboxSettings


async def test_healthz_reports_the_database_backend(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "database": "sqlite"}


async def test_stats_count_writes_per_table_and_operation(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    ticket = (await client.post("/tickets", json={"project": "OPS", "summary": "s", "reporter": "r"})).json()
    await client.post(f"/tickets/{ticket['key']}/comments", json={"author": "a", "body": "b"})
    await client.post(f"/tickets/{ticket['key']}/comments", json={"author": "a", "body": "c"})
    await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 10})
    await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 10**6})

    stats = (await client.get("/_stats")).json()

    assert stats["writes_by_table"] == {"tickets": 1, "ticket_comments": 2, "billing_refunds": 1}
    assert stats["writes_by_operation"]["ticket.comment"] == 2
    assert stats["writes_total"] == 4 == count_rows("write_log")
    assert stats["rows"]["billing_charges"] == 2
    assert stats["rows"]["ticket_comments"] == count_rows("ticket_comments")


async def test_reset_empties_the_systems_and_restores_seed_data(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    await client.post("/billing/refunds", json={"charge_id": 1, "amount_cents": 10}, headers={"Idempotency-Key": "k"})
    await client.post("/_faults", json={"fault": "503", "path_prefix": "/tickets"})

    response = await client.post("/_reset")

    assert response.json() == {"reset": True, "seeded": True}
    assert count_rows("write_log") == count_rows("billing_refunds") == count_rows("idempotency_keys") == 0
    assert (await client.get("/billing/charges/1")).json()["refunded_cents"] == 0
    assert (await client.get("/_faults")).json() == {"faults": [], "fired_total": 0}
    assert (await client.get("/tickets")).status_code == 200


async def test_reset_without_seed_leaves_the_systems_empty(
    client: httpx.AsyncClient, count_rows: Callable[..., int]
) -> None:
    await client.post("/_reset", params={"seed": False})

    assert count_rows("crm_contacts") == count_rows("billing_charges") == 0


def test_prepare_seeds_only_an_empty_database(database: Database, count_rows: Callable[..., int]) -> None:
    contacts = count_rows("crm_contacts")

    database.prepare()

    assert contacts == 3
    assert count_rows("crm_contacts") == contacts


def test_sqlite_file_directory_is_created(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'sandbox.db'}")
    db.prepare()
    db.dispose()

    assert (tmp_path / "nested" / "dir" / "sandbox.db").is_file()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://postgres@127.0.0.1/test", "postgresql+psycopg"),
        ("postgres://postgres@127.0.0.1/test", "postgresql+psycopg"),
        ("postgresql+psycopg://postgres@127.0.0.1/test", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_postgres_urls_use_the_psycopg_driver(url: str, driver: str) -> None:
    assert normalize_db_url(url).drivername == driver


def test_settings_come_from_the_environment_with_defaults() -> None:
    assert SandboxSettings.from_env({}) == SandboxSettings(db_url=DEFAULT_DB_URL, port=DEFAULT_PORT)
    configured = SandboxSettings.from_env({"KEEL_SANDBOX_DB_URL": "sqlite:///a.db", "KEEL_SANDBOX_PORT": "9001"})
    assert (configured.db_url, configured.port) == ("sqlite:///a.db", 9001)
    assert configured.with_overrides(port=0).port == 0


def test_non_numeric_port_in_the_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="KEEL_SANDBOX_PORT"):
        SandboxSettings.from_env({"KEEL_SANDBOX_PORT": "eighty"})


def test_cli_exposes_serve_with_its_options() -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--help"])

    assert result.exit_code == 0
    for option in ("--host", "--port", "--db-url", "--port-file"):
        assert option in result.output
