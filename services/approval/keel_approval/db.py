"""The approval store's database: SQLite by default, PostgreSQL by URL, schema by Alembic migrations."""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from keel_shared.databases import normalize_db_url
from keel_shared.settings import KeelSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
# Any constant works; it only has to be the same for every approval service sharing one database.
PG_MIGRATION_LOCK = 0x6B65656C_61707072


def database_url(settings: KeelSettings) -> URL:
    if settings.approval_db_url:
        return normalize_db_url(settings.approval_db_url)
    return make_url(f"sqlite:///{(settings.data_dir / 'approvals.db').resolve()}")


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock at the start: two deciders that both read "pending" and then write would
        # otherwise both succeed. On PostgreSQL the same job is done by SELECT ... FOR UPDATE.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    def __init__(self, url: str | URL) -> None:
        self.url = normalize_db_url(url)
        if self.url.get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(self.url)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to the newest revision; harmless when it is already there."""
        # Alembic is imported only where it is used: the service migrates in a child process
        # (`migrate_in_child`), so the long-running process never holds it in memory.
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if self.backend == "postgresql":
                # Two replicas starting together must not both create the tables.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    async def migrate_in_child(self) -> None:
        """`migrate`, run by `python -m keel_approval.db` with this database's URL in its environment
        (not on its command line, where other users could read a password)."""
        env = {**os.environ, "KEEL_APPROVAL_DB_URL": self.url.render_as_string(hide_password=False)}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "keel_approval.db",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await child.communicate()
        if child.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"migrating {self.describe()} failed: " + " | ".join(tail))

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return ScriptDirectory.from_config(config).get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()


if __name__ == "__main__":
    settings = KeelSettings()
    database = Database(database_url(settings))
    try:
        database.migrate()
    finally:
        database.dispose()
