"""Alembic environment: the URL comes from the caller (orchestrator.migrate) or PATCHAAS_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from orchestrator.persistence.db import create_engine_for
from orchestrator.persistence.models import Base
from orchestrator.settings import Settings

config = context.config
url = config.attributes.get("url") or Settings().database_url


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """The simulated fleet keeps its own `sim_*` tables in the same database: not ours to migrate."""
    return not (type_ == "table" and name is not None and name.startswith("sim_"))


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine_for(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
