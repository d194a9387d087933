"""The one settings class: read from the environment (prefix PATCHAAS_) once at start-up, passed down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.machine import Policy

DEFAULT_PACKAGE_ID = "94bd395f-9b54-4693-94ae-4f3aa93fc239"


class Settings(BaseSettings):
    """Everything configurable. Defaults are the embedded mode: a SQLite file and an in-process broker."""

    model_config = SettingsConfigDict(env_prefix="PATCHAAS_", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{Path('patchaas.db').absolute()}",
        description="SQLAlchemy URL; PostgreSQL in deployments, a SQLite file in the embedded default",
    )
    broker_url: str = Field(default="memory://", description="Celery broker; redis://… in deployments")
    smtp_url: str | None = Field(default=None, description="smtp://host:port; unset = emails stay queued")
    mail_from: str = "patching@patchaas.local"

    fleet: str = Field(default="simulated", description="fleet driver: simulated")
    sim_state_url: str | None = Field(
        default=None, description="where the simulated fleet keeps its state (shared by processes)"
    )
    sim_seed: int = 7
    sim_timings: str = Field(default="instant", description="instant | demo")

    max_cycles: int = 10
    reboot_timeout_seconds: float = 20 * 60
    package_timeout_seconds: float = 60 * 60
    power_timeout_seconds: float = 20 * 60
    poll_interval_seconds: float = 30.0
    max_attempts: int = 5
    max_kb_failures: int = 2

    lease_seconds: float = Field(default=300.0, description="a step's lease; above the longest fleet call")
    redrive_seconds: float = Field(default=30.0, description="how long a dispatched step waits to be re-sent")
    tick_seconds: float = Field(default=5.0, description="beat: how often due executions are claimed")
    tick_batch: int = 500
    short_countdown_seconds: float = Field(default=5.0, description="waits up to this use a task countdown")
    visibility_timeout_seconds: int = 4 * 3600
    retry_backoff_seconds: float = 2.0

    def policy(self) -> Policy:
        """The state machine's guards."""
        return Policy(
            max_cycles=self.max_cycles,
            reboot_timeout=timedelta(seconds=self.reboot_timeout_seconds),
            package_timeout=timedelta(seconds=self.package_timeout_seconds),
            power_timeout=timedelta(seconds=self.power_timeout_seconds),
            poll_interval=timedelta(seconds=self.poll_interval_seconds),
            max_attempts=self.max_attempts,
            max_kb_failures=self.max_kb_failures,
        )
