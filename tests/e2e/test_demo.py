"""`make demo`'s job on the embedded default (SQLite + in-process broker + worker and beat threads)."""

from __future__ import annotations

import io
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console

from orchestrator import demo, models


def test_demo_patches_the_fleet_to_the_end(tmp_path: Path) -> None:
    out = io.StringIO()
    code = demo.run(tmp_path, timeout=90, console=Console(file=out, width=160))
    text = out.getvalue()
    assert code == 0, text[-4000:]
    assert "Emails received by the SMTP server: 20" in text
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(models.Execution.state, sa.func.count()).group_by(
            models.Execution.state)).all())
        leftover = conn.execute(sa.select(sa.func.count()).select_from(models.Execution).where(
            models.Execution.ended_at.is_(None))).scalar()
    engine.dispose()
    assert leftover == 0
    assert states.get("completed", 0) >= 6 and states.get("failed", 0) == 3, states
