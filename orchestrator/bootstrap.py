"""The composition root: one place builds the database, fleet driver, mailer, engine and service from
Settings, for the worker, the API, the CLI, the demo and the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import db, notifications
from orchestrator.engine import Dispatcher, Engine, EngineConfig, Hooks
from orchestrator.fleet import Fleet
from orchestrator.service import PatchService
from orchestrator.settings import Settings


@dataclass
class Container:
    """Everything a process needs, built once."""

    settings: Settings
    db_engine: SqlEngine
    sessions: sessionmaker[Session]
    fleet: Fleet
    mailer: notifications.Mailer
    engine: Engine
    service: PatchService

    def close(self) -> None:
        """Release connections."""
        self.db_engine.dispose()


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's timings from settings."""
    return EngineConfig(
        lease=timedelta(seconds=settings.lease_seconds),
        redrive=timedelta(seconds=settings.redrive_seconds),
        short_countdown=timedelta(seconds=settings.short_countdown_seconds),
        retry_backoff=timedelta(seconds=settings.retry_backoff_seconds),
        tick_batch=settings.tick_batch,
    )


def build_fleet(settings: Settings) -> Fleet:
    """The fleet driver named by settings."""
    if settings.fleet == "simulated":
        from workers.fleet import factory

        return factory.simulated_from_settings(settings)
    raise ValueError(f"unknown fleet driver {settings.fleet!r} (PATCHAAS_FLEET); known: simulated")


def build_mailer(settings: Settings) -> notifications.Mailer:
    """SMTP when configured; otherwise emails stay queued with a clear reason."""
    if settings.smtp_url:
        return notifications.SmtpMailer(settings.smtp_url)
    return notifications.UnconfiguredMailer()


def build(
    settings: Settings,
    dispatcher: Dispatcher,
    fleet: Fleet | None = None,
    mailer: notifications.Mailer | None = None,
    clock: Callable[[], datetime] = db.utcnow,
    hooks: Hooks | None = None,
) -> Container:
    """Wire a container; anything passed in replaces what settings would build."""
    sql = db.create_engine_for(settings.database_url)
    sessions = db.session_factory(sql)
    fleet = fleet if fleet is not None else build_fleet(settings)
    mailer = mailer if mailer is not None else build_mailer(settings)
    engine = Engine(
        sessions=sessions,
        fleet=fleet,
        dispatcher=dispatcher,
        policy=settings.policy(),
        config=engine_config(settings),
        mailer=mailer,
        mail_from=settings.mail_from,
        clock=clock,
        hooks=hooks,
    )
    service = PatchService(sessions=sessions, dispatcher=dispatcher, clock=clock)
    return Container(settings, sql, sessions, fleet, mailer, engine, service)
