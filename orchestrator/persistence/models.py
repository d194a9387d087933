"""SQLAlchemy models: the only source of truth. Alembic migrations in migrations/ create these tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.persistence.db import UTCDateTime

JSONType = sa.JSON()


class Base(DeclarativeBase):
    """Declarative base with a naming convention Alembic can rely on."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Account(Base):
    """A customer account: alias, home datacenter, who gets the emails."""

    __tablename__ = "accounts"

    alias: Mapped[str] = mapped_column(sa.String(4), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    datacenter: Mapped[str] = mapped_column(sa.String(3))
    email: Mapped[str] = mapped_column(sa.String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Group(Base):
    """A server group; groups nest."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    datacenter: Mapped[str] = mapped_column(sa.String(3))
    parent_id: Mapped[str | None] = mapped_column(sa.ForeignKey("groups.id"), index=True)


class Server(Base):
    """A server of the inventory, as last seen by the orchestrator."""

    __tablename__ = "servers"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    group_id: Mapped[str | None] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    datacenter: Mapped[str] = mapped_column(sa.String(3))
    os_type: Mapped[str] = mapped_column(sa.String(100))
    power_state: Mapped[str] = mapped_column(sa.String(16), default="started")
    in_maintenance: Mapped[bool] = mapped_column(sa.Boolean, default=False)


class Execution(Base):
    """One run of the update package on one server: a durable state machine."""

    __tablename__ = "executions"
    __table_args__ = (
        # one execution per server at a time
        sa.Index(
            "uq_executions_active_server",
            "server_name",
            unique=True,
            postgresql_where=sa.text("ended_at IS NULL"),
            sqlite_where=sa.text("ended_at IS NULL"),
        ),
        sa.Index(  # the tick's keyset claims (next_run_at, id) of active rows (migration 0012)
            "ix_executions_due_id",
            "next_run_at",
            "id",
            postgresql_where=sa.text("ended_at IS NULL"),
            sqlite_where=sa.text("ended_at IS NULL"),
        ),
        sa.Index("ix_executions_server_created", "server_name", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    server_name: Mapped[str] = mapped_column(sa.ForeignKey("servers.name"))
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    package_id: Mapped[str] = mapped_column(sa.String(36))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    requested_by: Mapped[str] = mapped_column(sa.String(200))

    state: Mapped[str] = mapped_column(sa.String(32))
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    version: Mapped[int] = mapped_column(sa.Integer, default=0)
    cycle: Mapped[int] = mapped_column(sa.Integer, default=0)

    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dispatched_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(sa.String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    intent: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    cancel_reason: Mapped[str | None] = mapped_column(sa.Text)
    cancelled_by: Mapped[str | None] = mapped_column(sa.String(200))
    prior_power_state: Mapped[str | None] = mapped_column(sa.String(16))
    boot_id_before: Mapped[str | None] = mapped_column(sa.String(100))
    reboot_reason: Mapped[str | None] = mapped_column(sa.Text)
    kb_failures: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    installed_kbs: Mapped[list[str]] = mapped_column(JSONType, default=list)
    quarantined: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    installed_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    # rate-controlled rollouts and patch windows (migration 0004, orchestrator/services/rollouts.py): a held execution
    # has next_run_at NULL until the rollout's gate releases it; no new update cycle starts after not_after
    rollout_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("rollouts.id", ondelete="SET NULL"), index=True, default=None
    )
    rollout_position: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    rollout_wave: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # the W3C traceparent of the request that queued the run, when traces are on (migration 0009; the run's first
    # step continues that trace: orchestrator/observability/tracing.py)
    trace_parent: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    # when the running cycle was invoked (migration 0011): heartbeats extend its deadline up to this + the ceiling
    invoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # pre/post hooks (migration 0014, orchestrator/domain/hook_points.py): the run's hooks, fixed at its first step
    # ({name: definition}), and while running_hooks its stage ({"point", "cycle", "resume"})
    hook_plan: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    hook_stage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    # settling after a reboot (migration 0013, orchestrator/domain/settle.py): since when the servicing stack has been
    # seen idle, and with which boot id
    settled_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    settle_boot_id: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    # health checks (migration 0013, orchestrator/domain/health_points.py): the phase running and what outlives it
    health: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    begin_message: Mapped[str] = mapped_column(sa.String(200))
    end_message: Mapped[str | None] = mapped_column(sa.Text)

    initiations: Mapped[list[Initiation]] = relationship(
        back_populates="execution", order_by="Initiation.cycle", lazy="raise"
    )


class Initiation(Base):
    """One cycle of the update package on one execution."""

    __tablename__ = "initiations"
    __table_args__ = (sa.UniqueConstraint("execution_id", "cycle", name="uq_initiations_execution_cycle"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    begin_message: Mapped[str] = mapped_column(sa.String(200))
    end_message: Mapped[str | None] = mapped_column(sa.Text)
    updates_found: Mapped[int] = mapped_column(sa.Integer, default=0)
    reboot_required: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    result_code: Mapped[int] = mapped_column(sa.Integer, default=2)
    hresult: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    execution: Mapped[Execution] = relationship(back_populates="initiations", lazy="raise")


class Patch(Base):
    """One update attempted in one cycle, with the vendor's result."""

    __tablename__ = "patches"
    __table_args__ = (
        sa.UniqueConstraint("execution_id", "cycle", "kb", name="uq_patches_execution_cycle_kb"),
        sa.Index("ix_patches_execution", "execution_id", "id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    initiation_id: Mapped[int] = mapped_column(sa.ForeignKey("initiations.id", ondelete="CASCADE"))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    kb: Mapped[str] = mapped_column(sa.String(100))  # a KB, or a Linux package's name (migration 0003)
    title: Mapped[str] = mapped_column(sa.String(500))
    url: Mapped[str] = mapped_column(sa.String(500), default="")
    classification: Mapped[str] = mapped_column(sa.String(64), default="")
    result_code: Mapped[int] = mapped_column(sa.Integer)
    hresult: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reboot_required: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    status: Mapped[str] = mapped_column(sa.String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    begin_message: Mapped[str] = mapped_column(sa.String(600))
    end_message: Mapped[str | None] = mapped_column(sa.String(200))
    # Linux packages (migration 0003): versions before → after, and the package manager's output on failure
    from_version: Mapped[str | None] = mapped_column(sa.String(100))
    to_version: Mapped[str | None] = mapped_column(sa.String(100))
    output: Mapped[str | None] = mapped_column(sa.Text)


class ExecutionEvent(Base):
    """The audit trail: every saved transition, with the machine's note."""

    __tablename__ = "execution_events"
    __table_args__ = (sa.Index("ix_execution_events_execution", "execution_id", "id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str] = mapped_column(sa.String(32))
    to_state: Mapped[str] = mapped_column(sa.String(32))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    note: Mapped[str] = mapped_column(sa.Text)


class Outbox(Base):
    """An email to send after commit; one per (execution, kind), whatever crashes in between."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.UniqueConstraint("execution_id", "kind", name="uq_outbox_execution_kind"),
        sa.Index(
            "ix_outbox_unsent", "created_at",
            postgresql_where=sa.text("sent_at IS NULL"), sqlite_where=sa.text("sent_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    recipient: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.String(300))
    body: Mapped[str] = mapped_column(sa.Text)
    message_id: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dispatched_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)


class User(Base):
    """A person or script allowed to call the REST API: one account, CLC roles, an argon2 password hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(sa.String(100), unique=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    roles: Mapped[list[str]] = mapped_column(JSONType, default=list)
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # login throttling (migration 0008, orchestrator/services/auth.py): consecutive failures, and until when a
    # further attempt is refused without checking the password
    failed_logins: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Token(Base):
    """A bearer token, stored as its SHA-256 digest (the token itself is shown once, at login)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SshHost(Base):
    """How the `ssh` fleet driver reaches a Linux server, and its maintenance flag (Linux hosts have no
    control plane: the flag lives here, mirrored by /etc/patchaas/maintenance on the host).

    `key_ref` names a private key: an absolute path on the worker, or a file name resolved in
    PATCHAAS_SSH_KEY_DIR. The key itself is never stored here or logged."""

    __tablename__ = "ssh_hosts"

    server_name: Mapped[str] = mapped_column(sa.ForeignKey("servers.name", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    port: Mapped[int] = mapped_column(sa.Integer, default=22)
    username: Mapped[str] = mapped_column(sa.String(64), default="root")
    key_ref: Mapped[str] = mapped_column(sa.String(500))
    package_manager: Mapped[str] = mapped_column(sa.String(8))  # apt | dnf | yum
    in_maintenance: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # the host key pinned for this host ("SHA256:…", migration 0007), beside PATCHAAS_SSH_KNOWN_HOSTS
    host_key_fingerprint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Rollout(Base):
    """A group action or a window occurrence released a few servers at a time (orchestrator/services/rollouts.py)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    requested_by: Mapped[str] = mapped_column(sa.String(200))
    max_concurrency: Mapped[str | None] = mapped_column(sa.String(16))  # as asked: "5" or "10%"
    max_errors: Mapped[str | None] = mapped_column(sa.String(16))
    concurrency_limit: Mapped[int] = mapped_column(sa.Integer)  # resolved against `total`
    error_limit: Mapped[int | None] = mapped_column(sa.Integer)  # failures tolerated; one more stops it
    waves: Mapped[int] = mapped_column(sa.Integer, default=1)
    total: Mapped[int] = mapped_column(sa.Integer, default=0)
    state: Mapped[str] = mapped_column(sa.String(16))  # running | stopped | completed
    stop_reason: Mapped[str | None] = mapped_column(sa.Text)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())  # a window's end minus its cutoff
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PatchWindow(Base):
    """A scheduled patch window (orchestrator/services/windows.py): targets, a cron or monthly schedule in a time
    zone, a duration and a cutoff, rate-control options and the package to run."""

    __tablename__ = "patch_windows"
    __table_args__ = (sa.UniqueConstraint("account_alias", "name", name="uq_patch_windows_account_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    servers: Mapped[list[str]] = mapped_column(JSONType, default=list)
    groups: Mapped[list[str]] = mapped_column(JSONType, default=list)
    schedule_kind: Mapped[str] = mapped_column(sa.String(8))  # cron | monthly
    schedule: Mapped[str] = mapped_column(sa.String(200))
    timezone: Mapped[str] = mapped_column(sa.String(64))
    duration_seconds: Mapped[int] = mapped_column(sa.Integer)
    cutoff_seconds: Mapped[int] = mapped_column(sa.Integer)
    max_concurrency: Mapped[str | None] = mapped_column(sa.String(16))
    max_errors: Mapped[str | None] = mapped_column(sa.String(16))
    waves: Mapped[list[list[str]]] = mapped_column(JSONType, default=list)
    package_id: Mapped[str] = mapped_column(sa.String(36))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WindowOccurrence(Base):
    """One occurrence of a patch window, started once: the unique key (window, start) is inserted with
    ON CONFLICT DO NOTHING in the transaction that creates its rollout."""

    __tablename__ = "window_occurrences"
    __table_args__ = (sa.UniqueConstraint("window_id", "starts_at", name="uq_window_occurrences_window_start"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    window_id: Mapped[int] = mapped_column(sa.ForeignKey("patch_windows.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    rollout_id: Mapped[int | None] = mapped_column(sa.ForeignKey("rollouts.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    note: Mapped[str | None] = mapped_column(sa.Text)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)  # window.closed recorded (0010)


class ReportToken(Base):
    """A bearer token of the report channel (orchestrator/services/reports.py), minted when a cycle of the update
    package is invoked and handed to the package; stored only as its SHA-256 digest. It lets the package post
    reports of its own execution until that execution ends."""

    __tablename__ = "report_tokens"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"), index=True)
    cycle_key: Mapped[str] = mapped_column(sa.String(100))  # the invocation it was minted for (audit)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CycleReportRecord(Base):
    """One cycle's report as the update package posted it to the report channel: recorded once per
    (execution, cycle key); the engine reads it before asking the fleet (orchestrator/services/reports.py)."""

    __tablename__ = "cycle_reports"
    __table_args__ = (sa.UniqueConstraint("execution_id", "cycle_key", name="uq_cycle_reports_execution_key"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    cycle_key: Mapped[str] = mapped_column(sa.String(100))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the validated CycleReport, model_dump(mode="json")
    body_digest: Mapped[str] = mapped_column(sa.String(64))  # SHA-256 of the canonical body: tells a replay apart
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
