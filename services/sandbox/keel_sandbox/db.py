"""Engine and session set-up for SQLite (default) or PostgreSQL, plus schema creation and reset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from keel_sandbox.models import Base
from keel_sandbox.seed import seed_if_empty, seed_records

SQLITE_BUSY_TIMEOUT_S = 30
READ_ONLY_OPTION = "keel_sandbox_read_only"


def normalize_db_url(url: str | URL) -> URL:
    """Map a bare `postgresql://` URL to the psycopg 3 driver, the only PostgreSQL driver installed."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy so that `begin` below decides how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets tests read the database file while the server writes to it.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            # Take the write lock up front: a deferred transaction that reads a charge and then writes a
            # refund could otherwise interleave with another one and both pass the "refund <= refundable"
            # check.
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
        # Reads must not queue behind SQLite's write lock; on PostgreSQL the option is inert.
        self.read_sessions: sessionmaker[Session] = sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def prepare(self) -> None:
        """Create the schema (no migrations: the sandbox's data is disposable) and seed an empty database."""
        Base.metadata.create_all(self.engine)
        with self.sessions.begin() as session:
            seed_if_empty(session)

    def reset(self, *, seed: bool = True) -> None:
        with self.sessions.begin() as session:
            if self.backend == "postgresql":
                names = ", ".join(table.name for table in Base.metadata.sorted_tables)
                # RESTART IDENTITY keeps ids deterministic across resets, as SQLite does after a full delete.
                session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(Base.metadata.sorted_tables):
                    session.execute(table.delete())
            if seed:
                seed_records(session)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
