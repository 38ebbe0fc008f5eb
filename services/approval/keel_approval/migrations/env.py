"""Alembic environment of the approval store. Always driven from code (`keel_approval.db.migrate`),
which hands over an open connection, so there is no alembic.ini and no URL in a file."""

from alembic import context

from keel_approval.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
