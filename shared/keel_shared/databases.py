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
    """Create `metadata`'s missing tables, tolerating another process that creates them at the same
    moment: the loser of that race sees "already exists" (SQLite: OperationalError; PostgreSQL: a
    unique violation in its catalog), and a second pass then finds the tables. Any other problem
    still fails, on the second pass."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except DatabaseError:
        metadata.create_all(engine, checkfirst=True)
