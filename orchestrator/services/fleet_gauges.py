"""Fleet-level gauges for Prometheus, computed by one query per scrape (a prometheus-client custom collector):
active executions by state, the timer lag (the age of the oldest due `next_run_at` no worker holds), expired
leases, the outboxes' backlog and oldest age (emails; events not yet fanned out; webhook deliveries
pending), servers a failed run may have left in maintenance mode,
and the compliance counts (orchestrator/services/compliance.py's verdict, for every server).

Served by beat's exporter (`patchaas beat` with PATCHAAS_METRICS_PORT): beat runs exactly once per
deployment, so the fleet is counted once, whatever the number of workers and API processes.

Cost: one statement, a UNION ALL of eight parts. The active ones read the partial indexes on `ended_at IS
NULL` (their cost follows the work in flight), the outboxes their partial indexes of unsent rows; the per-server part
probes `(server_name, created_at)` once per server for its latest finished run (as `patchaas compliance`
does), and its patches for a pending one (a scan that found updates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, sessionmaker

from orchestrator.domain import machine
from orchestrator.persistence import event_models, models
from orchestrator.persistence.db import UTCDateTime, utcnow
from orchestrator.services.health import LOOKBACK

log = logging.getLogger(__name__)
ACTIVE_STATES = tuple(s.value for s in machine.State if s not in machine.TERMINAL)
COMPLIANCE = ("compliant", "non_compliant", "unknown")
OUTBOXES = ("email", "event", "webhook")


def statement(now: datetime, lookback: timedelta = LOOKBACK) -> sa.CompoundSelect:
    """The one query: rows of (kind, label, n, at)."""
    e, o, s, p = models.Execution, models.Outbox, models.Server, models.Patch
    active = e.ended_at.is_(None)
    no_time = sa.cast(sa.null(), UTCDateTime())

    def kind(name: str) -> Any:
        return sa.literal_column(f"'{name}'")

    by_state = sa.select(kind("state"), e.state, sa.func.count(), no_time).where(active).group_by(e.state)
    free = sa.or_(e.lease_expires_at.is_(None), e.lease_expires_at < now)
    due = sa.select(kind("due"), kind(""), sa.func.count(), sa.func.min(e.next_run_at)).where(
        active, e.next_run_at <= now, free)
    expired = sa.select(kind("expired"), kind(""), sa.func.count(), no_time).where(active, e.lease_expires_at < now)
    outbox = sa.select(kind("outbox"), kind("email"), sa.func.count(), sa.func.min(o.created_at)).where(
        o.sent_at.is_(None))
    ev, wd = event_models.Event, event_models.WebhookDelivery
    events = sa.select(kind("outbox"), kind("event"), sa.func.count(), sa.func.min(ev.created_at)).where(
        ev.fanned_out_at.is_(None))  # events not yet fanned out to their webhook deliveries
    webhooks = sa.select(kind("outbox"), kind("webhook"), sa.func.count(), sa.func.min(wd.created_at)).where(
        wd.delivered_at.is_(None), wd.failed_at.is_(None))

    latest = (sa.select(e.id).where(e.server_name == s.name, e.ended_at.is_not(None))
              .order_by(e.created_at.desc()).limit(1).correlate(s).scalar_subquery())
    per_server = sa.select(s.name.label("name"), latest.label("run")).subquery()
    run = aliased(e)
    later = aliased(e)
    scan_found = sa.exists().where(p.execution_id == run.id, p.status == "pending")
    status = sa.case((run.id.is_(None), "unknown"), (sa.and_(run.state == "completed", ~scan_found), "compliant"),
                     else_="non_compliant")
    left = sa.and_(run.failure_reason.like("%cleanup stopped%"), run.ended_at >= now - lookback,
                   ~sa.exists().where(later.server_name == per_server.c.name, later.ended_at.is_(None)))
    where = sa.case((left, "server_left"), else_="server")
    servers = (sa.select(where, status, sa.func.count(), no_time)
               .select_from(per_server.outerjoin(run, run.id == per_server.c.run)).group_by(where, status))
    return sa.union_all(by_state, due, expired, outbox, events, webhooks, servers)


class FleetGauges:
    """The numbers of one scrape."""

    def __init__(self, rows: list[Any], now: datetime, seconds: float) -> None:
        self.active = dict.fromkeys(ACTIVE_STATES, 0)
        self.compliance = dict.fromkeys(COMPLIANCE, 0)
        self.timers_due = self.expired_leases = self.left_in_maintenance = 0
        self.timer_lag_seconds = 0.0
        self.outboxes = dict.fromkeys(OUTBOXES, (0, 0.0))  # outbox -> (rows not sent, age of the oldest, s)
        self.seconds = seconds
        for kind, label, n, at in rows:
            n = int(n or 0)
            if kind == "state":
                self.active[str(label)] = self.active.get(str(label), 0) + n
            elif kind == "due":
                self.timers_due = n
                self.timer_lag_seconds = max(0.0, (now - at).total_seconds()) if at is not None else 0.0
            elif kind == "expired":
                self.expired_leases = n
            elif kind == "outbox":
                self.outboxes[str(label)] = (n, max(0.0, (now - at).total_seconds()) if at is not None else 0.0)
            elif kind in ("server", "server_left"):
                self.compliance[str(label)] += n
                if kind == "server_left":
                    self.left_in_maintenance += n

    @property
    def outbox_backlog(self) -> int:
        return self.outboxes["email"][0]

    @property
    def outbox_oldest_seconds(self) -> float:
        return self.outboxes["email"][1]


def measure(sessions: sessionmaker[Session], now: datetime | None = None,
            lookback: timedelta = LOOKBACK) -> FleetGauges:
    """Run the one query."""
    now = now or utcnow()
    started = time.perf_counter()
    with sessions() as session:
        rows = list(session.execute(statement(now, lookback)).all())
    return FleetGauges(rows, now, time.perf_counter() - started)


class FleetCollector:
    """prometheus-client custom collector: one `measure` per scrape."""

    def __init__(self, sessions: sessionmaker[Session] | Callable[[], sessionmaker[Session]],
                 clock: Callable[[], datetime] = utcnow, lookback: timedelta = LOOKBACK) -> None:
        self._sessions = sessions
        self.clock = clock
        self.lookback = lookback

    def sessions(self) -> sessionmaker[Session]:
        if not isinstance(self._sessions, sessionmaker):
            self._sessions = self._sessions()  # built on the first scrape, not at start-up
        return self._sessions

    def describe(self) -> list[Any]:
        return list(self._families(FleetGauges([], utcnow(), 0.0)))  # the names, without a query

    def collect(self) -> Iterator[Any]:
        try:
            gauges: FleetGauges | None = measure(self.sessions(), self.clock(), self.lookback)
        except Exception as exc:  # the database is away: say so, and let the other metrics through
            log.warning("fleet gauges: query failed: %s", str(getattr(exc, "orig", exc)).strip().splitlines()[:1])
            gauges = None
        yield from self._families(gauges)

    def _families(self, g: FleetGauges | None) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("patchaas_fleet_gauges_up", "1 if the fleet-level gauges' query worked")
        up.add_metric([], 0.0 if g is None else 1.0)
        yield up
        if g is None:
            return
        states = GaugeMetricFamily("patchaas_active_executions", "Executions not ended, by state", labels=["state"])
        for state, n in g.active.items():
            states.add_metric([state], n)
        yield states
        for name, text, value in (
            ("patchaas_timer_lag_seconds", "Age of the oldest due next_run_at that no worker holds (0: none due)",
             g.timer_lag_seconds),
            ("patchaas_timers_due", "Due timers that no worker holds", g.timers_due),
            ("patchaas_expired_leases", "Active executions whose step lease expired (a worker died mid-step)",
             g.expired_leases),
            ("patchaas_servers_left_in_maintenance",
             "Servers whose last run could not turn maintenance mode off, with no run since", g.left_in_maintenance),
            ("patchaas_fleet_gauges_query_seconds", "Time of the fleet-level gauges' one query", g.seconds),
        ):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            yield family
        backlog = GaugeMetricFamily("patchaas_outbox_backlog", "Outbox rows not sent yet: emails, events not fanned "
                                    "out, webhook deliveries pending", labels=["outbox"])
        oldest = GaugeMetricFamily("patchaas_outbox_oldest_age_seconds", "Age of the oldest unsent outbox row",
                                   labels=["outbox"])
        for outbox, (n, age) in g.outboxes.items():
            backlog.add_metric([outbox], n)
            oldest.add_metric([outbox], age)
        yield backlog
        yield oldest
        compliance = GaugeMetricFamily("patchaas_servers_compliance", "Servers by compliance (their last finished "
                                       "run: compliant, non_compliant, unknown)", labels=["status"])
        for status, n in g.compliance.items():
            compliance.add_metric([status], n)
        yield compliance
