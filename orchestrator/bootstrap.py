"""The composition root: one place builds the database, fleet driver, mailer, engine and service from
Settings, for the worker, the API, the CLI, the demo and the tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import ports
from orchestrator.engine.config import EngineConfig
from orchestrator.engine.engine import Engine
from orchestrator.engine.webhooks import WebhookConfig, WebhookOutbox
from orchestrator.observability import telemetry
from orchestrator.persistence import db
from orchestrator.ports import Dispatcher, Fleet, Hooks
from orchestrator.services.patching import PatchService
from orchestrator.settings import Settings
from simulation import faults
from workers import mail, webhooks
from workers.fleet import health_probes


class Container:
    """Everything a process needs, built once. The fleet driver and the engine are built on first use:
    an API process or a Python-API client never needs them."""

    def __init__(
        self,
        settings: Settings,
        db_engine: SqlEngine,
        sessions: sessionmaker[Session],
        mailer: ports.Mailer,
        service: PatchService,
        make_engine: Callable[[], tuple[Fleet, Engine]],
    ) -> None:
        self.settings = settings
        self.db_engine = db_engine
        self.sessions = sessions
        self.mailer = mailer
        self.service = service
        self._make_engine = make_engine
        self._built: tuple[Fleet, Engine] | None = None

    @property
    def fleet(self) -> Fleet:
        return self._wired()[0]

    @property
    def engine(self) -> Engine:
        return self._wired()[1]

    def _wired(self) -> tuple[Fleet, Engine]:
        if self._built is None:
            self._built = self._make_engine()
        return self._built

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
        email_hold=timedelta(seconds=settings.email_hold_seconds),
        db_retry=timedelta(seconds=settings.db_retry_seconds),
        batch_size=settings.batch_size,
        batch_spread=settings.batch_spread,
        batch_budget=timedelta(seconds=settings.batch_budget_seconds),
        batch_max_rounds=settings.batch_max_rounds,
        batch_fleet_threads=settings.batch_fleet_threads,
        tick_lookahead=(None if settings.tick_lookahead_seconds is None
                        else timedelta(seconds=settings.tick_lookahead_seconds)),
        tick_max_rounds=settings.tick_max_rounds,
    )


def build_fleet(settings: Settings) -> Fleet:
    """The fleet driver named by settings."""
    if settings.fleet == "simulated":
        from workers.fleet import factory

        return factory.simulated_from_settings(settings)
    if settings.fleet == "clc":
        from workers.fleet import clc

        return clc.ClcFleet.from_settings(settings)
    if settings.fleet == "ssh":
        from workers.fleet import ssh

        return ssh.SshFleet.from_settings(settings)
    if settings.fleet == "routing":  # per server OS family: Windows → PATCHAAS_WINDOWS_FLEET, Linux → ssh
        from workers.fleet import routing, ssh

        if settings.windows_fleet in ("routing", "ssh"):
            raise ValueError(f"PATCHAAS_WINDOWS_FLEET={settings.windows_fleet!r}: choose simulated or clc")
        windows = build_fleet(settings.model_copy(update={"fleet": settings.windows_fleet}))
        return routing.RoutingFleet.from_settings(settings, windows=windows, linux=ssh.SshFleet.from_settings(settings))
    raise ValueError(
        f"unknown fleet driver {settings.fleet!r} (PATCHAAS_FLEET); known: simulated, clc, ssh, routing"
    )


def build_mailer(settings: Settings) -> ports.Mailer:
    """SMTP when configured; otherwise emails stay queued with a clear reason."""
    if settings.smtp_url:
        return mail.SmtpMailer(settings.smtp_url)
    return mail.UnconfiguredMailer()


def webhook_config(settings: Settings) -> WebhookConfig:
    """The webhook outbox's timings from settings (PATCHAAS_WEBHOOK_*)."""
    return WebhookConfig(
        keys=settings.webhook_key.get_secret_value() if settings.webhook_key else None,
        hold=timedelta(seconds=settings.webhook_hold_seconds),
        redrive=timedelta(seconds=settings.redrive_seconds),
        retry_base=timedelta(seconds=settings.webhook_retry_base_seconds),
        retry_cap=timedelta(seconds=settings.webhook_retry_max_seconds),
        max_age=timedelta(seconds=settings.webhook_max_age_seconds),
        disable_after=timedelta(seconds=settings.webhook_disable_after_seconds),
        disable_min_failures=settings.webhook_disable_min_failures,
        tick_batch=settings.tick_batch,
        tick_rounds=settings.tick_max_rounds,
    )


def build_webhook_sender(settings: Settings) -> ports.WebhookSender:
    """httpx with the configured timeouts (non-public addresses refused unless allowed)."""
    return webhooks.HttpxWebhookSender(settings.webhook_timeout_seconds, settings.webhook_connect_timeout_seconds,
                                       settings.webhook_allow_private_addresses)


def build(
    settings: Settings,
    dispatcher: Dispatcher,
    fleet: Fleet | None = None,
    mailer: ports.Mailer | None = None,
    clock: Callable[[], datetime] = db.utcnow,
    hooks: Hooks | None = None,
    webhook_sender: ports.WebhookSender | None = None,
    hook_caller: ports.HttpCaller | None = None,
    health_prober: ports.HealthProber | None = None,
) -> Container:
    """Wire a container; anything passed in replaces what settings would build."""
    sql = db.create_engine_for(settings.database_url, ping_after_idle=settings.db_ping_after_idle_seconds)
    sessions = db.session_factory(sql)
    mailer = mailer if mailer is not None else build_mailer(settings)

    def make_engine() -> tuple[Fleet, Engine]:
        driver = fleet if fleet is not None else build_fleet(settings)
        observed = telemetry.for_settings(settings.metrics_enabled)  # the ports metered once, here
        driver = observed.fleet(driver, settings.fleet)
        if settings.report_base_url:  # offer the report channel; read recorded reports before polling
            from orchestrator.services import reports

            driver = reports.ReportingFleet(driver, reports.ReportChannel(sessions, clock), settings.report_base_url)
        crash_hooks = hooks if hooks is not None else faults.hooks_from_settings(settings)  # chaos tests only
        engine = Engine(
            sessions=sessions,
            fleet=driver,
            dispatcher=dispatcher,
            policy=settings.policy(),
            config=engine_config(settings),
            mailer=observed.mailer(mailer),
            mail_from=settings.mail_from,
            clock=clock,
            hooks=crash_hooks,
            telemetry=observed,
        )
        sender = webhook_sender if webhook_sender is not None else build_webhook_sender(settings)
        engine.webhooks = WebhookOutbox(engine.transaction, sender, clock, webhook_config(settings), crash_hooks)
        engine.hook_caller = hook_caller if hook_caller is not None else webhooks.HttpxHookCaller(
            settings.webhook_allow_private_addresses)  # HTTP hooks: the same address rule as webhooks
        engine.hook_keys = settings.webhook_key.get_secret_value() if settings.webhook_key else None
        engine.health_prober = health_prober if health_prober is not None else health_probes.HttpxProber()
        return driver, engine

    service = PatchService(sessions=sessions, dispatcher=dispatcher, clock=clock,
                           redrive=timedelta(seconds=settings.redrive_seconds))
    return Container(settings, sql, sessions, mailer, service, make_engine)
