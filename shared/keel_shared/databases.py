"""Database URLs as Keel's services open them."""

from sqlalchemy import URL, Engine, MetaData, make_url
from sqlalchemy.exc import DatabaseError


def normalize_db_url(url: str | URL) -> URL:
    """Map `postgresql://` (and `postgres://`) to the psycopg 3 driver, the only PostgreSQL driver Keel
    installs; SQLAlchemy would otherwise look for psycopg2. Other URLs pass through unchanged."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """Create `metadata`'s missing tables, tolerating other processes or threads that create them at the
    same moment: the loser of a race sees "already exists" (SQLite: OperationalError; PostgreSQL: a
    unique violation in its catalog), and the next pass finds that table. With several tables and several
    creators a pass can lose on each table in turn, so there is one pass per table; any other problem
    still fails, on the last pass."""
    for _ in range(len(metadata.tables)):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except DatabaseError:
            continue
    metadata.create_all(engine, checkfirst=True)
