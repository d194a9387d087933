"""The one settings class: read from the environment (prefix PATCHAAS_) once at start-up, passed down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.domain.machine import Policy

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

    fleet: str = Field(default="simulated", description="fleet driver: simulated | clc | ssh | routing")
    sim_state_url: str | None = Field(
        default=None, description="where the simulated fleet keeps its state (shared by processes)"
    )
    sim_seed: int = 7
    sim_timings: str = Field(default="instant", description="instant | demo | soak")
    sim_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="simulated fleet: share of calls that fail transiently (chaos)"
    )

    max_cycles: int = 10
    reboot_timeout_seconds: float = 20 * 60
    package_timeout_seconds: float = 60 * 60
    power_timeout_seconds: float = 20 * 60
    poll_interval_seconds: float = 30.0
    max_attempts: int = 5
    max_kb_failures: int = 2
    # a cycle's heartbeats and what blocks it (issue 12; docs/WINDOWS.md, "The engine's side")
    heartbeat_seconds: int = Field(
        default=300, ge=0, le=3600,
        description="sent to the package as patchaas.heartbeatSeconds: how often it posts a running report (0: none; "
        "windows-update.ps1 raises 1-29 to 30)",
    )
    heartbeat_grace_seconds: float = Field(
        default=15 * 60, gt=0,
        description="each heartbeat pushes the cycle's deadline to the heartbeat + this (keep it above the interval)",
    )
    package_ceiling_seconds: float = Field(
        default=6 * 3600, gt=0,
        description="heartbeats never extend a cycle past its invocation + this; at least the package timeout",
    )
    busy_retries: int = Field(
        default=5, ge=0,
        description="cycles of a run that may find the installer busy (or another run's lock) before it fails",
    )
    busy_backoff_seconds: float = Field(default=120.0, ge=0, description="the first wait after a busy cycle (doubles)")
    busy_backoff_max_seconds: float = Field(default=1800.0, ge=0, description="the longest wait after a busy cycle")
    max_pending_reboots: int = Field(
        default=3, ge=1, description="reboots in a row for a reboot the package still finds pending, before failing"
    )
    settle_seconds: float = Field(
        default=60.0, ge=0, description="after a reboot: how long the servicing stack must stay idle (docs/HOOKS.md)"
    )

    lease_seconds: float = Field(default=300.0, description="a step's lease; above the longest fleet call")
    redrive_seconds: float = Field(default=30.0, description="how long a dispatched step waits to be re-sent")
    tick_seconds: float = Field(default=5.0, description="beat: how often due executions are claimed")
    tick_batch: int = 500
    short_countdown_seconds: float = Field(default=5.0, description="waits up to this use a task countdown")
    # batches and timers (orchestrator/engine/rounds.py; docs/ARCHITECTURE.md, "Batches and timers")
    batch_size: int = Field(default=100, ge=1, description="executions per batch message at most")
    batch_spread: int = Field(
        default=8, ge=1, description="an immediate hand-off is split into at least this many messages"
    )
    batch_budget_seconds: float = Field(
        default=2.0, gt=0, description="a batch task stops chaining due steps after this long (far below the lease)"
    )
    batch_max_rounds: int = Field(default=200, ge=1, description="and after this many rounds")
    batch_fleet_threads: int = Field(default=8, ge=1, description="fleet calls of one round run on this many threads")
    tick_lookahead_seconds: float | None = Field(
        default=None, ge=0, description="the tick hands off timers due within this (default: short_countdown)"
    )
    tick_max_rounds: int = Field(default=200, ge=1, description="a tick claims at most this many times tick_batch "
                                 "(and for at most its lookahead)")
    visibility_timeout_seconds: int = 4 * 3600
    broker_socket_timeout_seconds: float = Field(
        default=10.0, description="a Redis call that gets no answer fails after this long (frozen or half-open)"
    )
    retry_backoff_seconds: float = 2.0
    email_hold_seconds: float = Field(
        default=120.0, description="an email being sent is not sent again for this long; above the SMTP timeout"
    )
    db_retry_seconds: float = Field(
        default=20.0, description="a step retries a database blip for this long (capped at half the lease)"
    )
    db_ping_after_idle_seconds: float = Field(
        default=1.0, ge=0, description="a pooled connection idle this long is pinged before use (0: always)"
    )

    # observability (orchestrator/observability; docs/OPERATIONS.md)
    metrics_enabled: bool = Field(default=True, description="engine metrics, step log context and spans (false: none)")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="worker/beat: serve Prometheus metrics on this port (multiprocess)"
    )
    metrics_address: str = Field(default="127.0.0.1", description="worker/beat: the metrics exporter's address")
    log_format: Literal["console", "json"] = Field(default="console", description="API, workers, beat: log lines")

    # events and webhooks (orchestrator/engine/webhooks.py; docs/HOOKS.md)
    webhook_key: SecretStr | None = Field(
        default=None, description="Fernet key(s), comma-separated (the first seals): seal webhook secrets at rest"
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="a webhook POST's read timeout")
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0, description="first retry wait (doubles)")
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0, description="longest wait between retries")
    webhook_max_age_seconds: float = Field(default=24 * 3600.0, gt=0, description="a delivery is retried this long")
    webhook_disable_after_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="a subscription failing every attempt this long is disabled"
    )
    webhook_disable_min_failures: int = Field(default=5, ge=1, description="… after at least this many in a row")
    webhook_hold_seconds: float = Field(default=120.0, gt=0, description="a delivery being sent is not sent again")
    webhook_allow_private_addresses: bool = Field(
        default=False, description="let webhooks call loopback/private addresses (tests, private deployments)"
    )

    crash_points: str | None = Field(
        default=None, description="chaos tests only: where workers kill themselves (see simulation/faults.py)"
    )
    crash_seed: int = 0
    crash_state_dir: str | None = Field(
        default=None, description="chaos tests only: shared directory for cluster-wide crash counts and log"
    )

    token_ttl_seconds: int = Field(
        default=14 * 24 * 3600, gt=0, description="how long a REST bearer token lives (CLC: up to 2 weeks)"
    )
    api_token_cache_seconds: float = Field(
        default=5.0, ge=0, description="REST: a checked token's caller is reused this long (0: a query per call)"
    )

    clc_base_url: str | None = Field(
        default=None, description="the clc fleet driver: CLC API v2 base URL (or `patchaas simulator`)"
    )
    clc_username: str | None = None
    clc_password: SecretStr | None = None
    clc_account_alias: str | None = Field(default=None, description="unset: the alias the CLC login answers")
    clc_rate_per_second: float = Field(
        default=10.0, gt=0, description="client-side rate limit, per process: the most the adaptive limiter sends"
    )
    clc_rate_burst: int = Field(default=10, ge=1)
    clc_rate_start_per_second: float | None = Field(
        default=None, gt=0, description="where the adaptive limiter starts, doubling each second until a 429 "
        "(unset: at PATCHAAS_CLC_RATE_PER_SECOND)"
    )
    clc_concurrency: int = Field(
        default=128, ge=1, le=2048,
        description="clc calls in flight per worker process (a batch round's pool width; above PATCHAAS_BATCH_SIZE "
        "buys nothing: bench/control_plane.py)"
    )
    clc_retry_attempts: int = Field(default=6, ge=1, description="attempts per request on 5xx/connection errors")
    clc_retry_initial_seconds: float = Field(default=0.25, ge=0, description="first backoff (doubles, + jitter)")
    clc_retry_max_backoff_seconds: float = Field(default=4.0, ge=0)
    clc_retry_deadline_seconds: float = Field(default=30.0, gt=0, description="a request gives up after this")
    clc_connect_timeout_seconds: float = 5.0
    clc_read_timeout_seconds: float = 15.0
    clc_poll_interval_seconds: float = Field(default=2.0, gt=0, description="queue status polling (CLC: ~2 s)")
    clc_operation_timeout_seconds: float = Field(
        default=60.0, gt=0, description="how long set maintenance / power off may stay queued"
    )

    report_base_url: str | None = Field(
        default=None,
        description="the REST API's externally reachable base URL: the update package posts each cycle's report "
        "to <this>/v2/patchaas/executions/{id}/reports; unset = no report channel, results are polled",
    )
    demo_transport: str = Field(
        default="inprocess", description="`patchaas demo`: inprocess (fleet in process) | http (simulator + API)"
    )

    windows_fleet: str = Field(
        default="simulated", description="PATCHAAS_FLEET=routing: the driver for Windows servers (simulated | clc)"
    )
    ssh_known_hosts: str | None = Field(
        default=None, description="the ssh driver: OpenSSH known_hosts file pinning every host's key"
    )
    ssh_key_dir: str | None = Field(default=None, description="where relative ssh_hosts.key_ref names resolve")
    ssh_accept_unknown_host_keys: bool = Field(
        default=False, description="tests only: accept (AutoAddPolicy) host keys missing from known_hosts"
    )
    ssh_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    ssh_command_timeout_seconds: float = Field(default=120.0, gt=0)
    ssh_retry_attempts: int = Field(default=4, ge=1, description="attempts per command on connection errors")
    ssh_retry_initial_seconds: float = Field(default=0.5, ge=0)
    ssh_retry_max_backoff_seconds: float = Field(default=5.0, ge=0)
    ssh_retry_deadline_seconds: float = Field(default=30.0, gt=0)
    ssh_reboot_command: str = Field(default="systemctl reboot", description="how the ssh driver reboots a host")
    ssh_yum_excludes: str = Field(
        default="kernel* nss*", description="dnf/yum: package globs never upgraded (the original's default)"
    )
    ssh_apt_excludes: str = Field(default="", description="apt: package globs never upgraded")
    ssh_settle_degraded: bool = Field(
        default=True, description="after a reboot, systemctl is-system-running `degraded` counts as settled"
    )

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
            heartbeat_seconds=self.heartbeat_seconds,
            heartbeat_grace=timedelta(seconds=self.heartbeat_grace_seconds),
            package_ceiling=timedelta(seconds=max(self.package_ceiling_seconds, self.package_timeout_seconds)),
            busy_retries=self.busy_retries,
            busy_backoff=timedelta(seconds=self.busy_backoff_seconds),
            busy_backoff_max=timedelta(seconds=self.busy_backoff_max_seconds),
            max_pending_reboots=self.max_pending_reboots,
            settle_period=timedelta(seconds=self.settle_seconds),
        )
