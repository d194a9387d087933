"""The same Alembic migrations build the schema on PostgreSQL and SQLite, match the models, and go down."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from orchestrator.persistence import migrate, models


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    command.check(migrate.alembic_config(url))  # raises if the models and the migrations disagree
    tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {t.name for t in models.Base.metadata.sorted_tables} <= tables


def test_migrations_match_the_models_on_postgresql(pg_url: str) -> None:
    command.check(migrate.alembic_config(pg_url))


def test_migrations_go_down_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert set(sa.inspect(sa.create_engine(url)).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
