"""What an operator (or a load balancer, or Kubernetes) asks at three in the morning: is the service able to
work (`readiness`: the database answers and is migrated to our head, the broker answers) and is the work
flowing (`overview`: what is running, what is overdue, what is retrying, which emails are stuck, which runs
could not take their server out of maintenance mode).

Served by `GET /healthz` and `GET /readyz` (orchestrator/entrypoints/rest/health.py) and `patchaas status`.
Every query of `overview` reads active executions through the partial indexes on `ended_at IS NULL` (its
cost follows the work in flight, not the history), except the look back at runs whose cleanup failed,
which is bounded to the last `lookback`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, sessionmaker

from orchestrator.persistence import models

OVERDUE_AFTER = timedelta(seconds=60)  # a timer this late means the tick or the workers are not keeping up
LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class Check:
    """One dependency: whether it answered, in how long, and what is wrong if not."""

    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class Overview:
    """The work in flight, from the database."""

    at: datetime
    active: dict[str, int] = field(default_factory=dict)  # active executions by state
    held: int = 0  # waiting for their rollout's gate (no timer)
    overdue: int = 0  # timers more than OVERDUE_AFTER late with no lease held
    oldest_overdue_seconds: float | None = None
    expired_leases: int = 0  # a worker died holding them; the tick re-drives them
    retrying: int = 0  # active executions whose last step failed and is being retried
    unsent_emails: int = 0
    oldest_unsent_seconds: float | None = None
    left_in_maintenance: tuple[tuple[str, str], ...] = ()  # (server, execution) whose cleanup stopped

    @property
    def healthy(self) -> bool:
        return self.overdue == 0 and not self.left_in_maintenance

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["left_in_maintenance"] = [{"server": s, "execution_id": e} for s, e in self.left_in_maintenance]
        data["healthy"] = self.healthy
        return data


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail = probe()
        ok = True
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is the answer, never a crash
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail, ok = f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": "), False
    return Check(name, ok, detail, round(time.perf_counter() - started, 4))


def database_check(sessions: sessionmaker[Session]) -> Check:
    """The database answers and its schema is at our newest migration (a worker on an old schema would
    fail on its first step; better to say so before)."""

    def probe() -> str:
        from orchestrator.persistence.migrate import current_revision, head_revision

        with sessions() as session:
            session.execute(sa.text("SELECT 1"))
            current = current_revision(session.connection())
        head = head_revision()
        if current != head:
            raise RuntimeError(f"schema at migration {current or 'none'}, this release needs {head}: "
                               "run `patchaas db upgrade`")
        return f"migration {current}"

    return _timed("database", probe)


def broker_check(broker_url: str, timeout: float = 2.0) -> Check:
    """The broker accepts a connection (one attempt, bounded by `timeout`)."""

    def probe() -> str:
        from kombu import Connection

        with Connection(broker_url, connect_timeout=timeout, transport_options={"max_retries": 0}) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            return f"{conn.transport_cls} reachable"

    return _timed("broker", probe)


def readiness(sessions: sessionmaker[Session], broker_url: str) -> list[Check]:
    return [database_check(sessions), broker_check(broker_url)]


def overview(sessions: sessionmaker[Session], now: datetime, overdue_after: timedelta = OVERDUE_AFTER,
             lookback: timedelta = LOOKBACK) -> Overview:
    e = models.Execution
    active = e.ended_at.is_(None)
    late = now - overdue_after
    with sessions() as session:
        by_state = dict(session.execute(sa.select(e.state, sa.func.count()).where(active).group_by(e.state)).all())
        held = session.scalar(sa.select(sa.func.count()).where(active, e.next_run_at.is_(None))) or 0
        free = sa.or_(e.lease_expires_at.is_(None), e.lease_expires_at < now)
        overdue, oldest = session.execute(
            sa.select(sa.func.count(), sa.func.min(e.next_run_at)).where(active, e.next_run_at < late, free)
        ).one()
        expired = session.scalar(sa.select(sa.func.count()).where(active, e.lease_expires_at < now)) or 0
        retrying = session.scalar(sa.select(sa.func.count()).where(active, e.attempts > 0)) or 0
        o = models.Outbox
        unsent, oldest_mail = session.execute(
            sa.select(sa.func.count(), sa.func.min(o.created_at)).where(o.sent_at.is_(None))
        ).one()
        later = aliased(e)
        stuck = session.execute(  # cleanup stopped, and no run on the server since (it would have cleaned up)
            sa.select(e.server_name, e.id).where(
                e.ended_at >= now - lookback, e.failure_reason.like("%cleanup stopped%"),
                ~sa.exists().where(later.server_name == e.server_name, later.created_at > e.ended_at))
            .order_by(e.ended_at.desc()).limit(100)
        ).all()
    return Overview(
        at=now, active={str(k): int(v) for k, v in sorted(by_state.items())}, held=int(held),
        overdue=int(overdue or 0), oldest_overdue_seconds=_age(now, oldest), expired_leases=int(expired),
        retrying=int(retrying), unsent_emails=int(unsent or 0), oldest_unsent_seconds=_age(now, oldest_mail),
        left_in_maintenance=tuple((str(s), str(i)) for s, i in stuck),
    )


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 1)
