"""The `ssh` fleet driver: Linux servers patched over SSH with apt or dnf/yum.

paramiko, not asyncssh: the Fleet protocol, the engine and the Celery prefork workers are synchronous,
one short call per step; paramiko is a blocking client that fits that directly (no event loop to run per
call), reads OpenSSH known_hosts files, and has `RejectPolicy` for pinned host keys.

- Connection details per server live in the `ssh_hosts` table (host, port, user, a key *reference*: an
  absolute path on the worker or a file name in PATCHAAS_SSH_KEY_DIR). Key material is never stored in the
  database and never logged.
- Host keys are pinned: the known_hosts file PATCHAAS_SSH_KNOWN_HOSTS, unknown or changed keys refused
  (`RejectPolicy`), and/or the SHA256 fingerprint an operator registered for the host (ssh_hosts, migration
  0007; the host must present that key). Only PATCHAAS_SSH_ACCEPT_UNKNOWN_HOST_KEYS=true (for tests)
  switches to AutoAddPolicy, and never for a host with a registered fingerprint.
- A key reference is a file (absolute, or in PATCHAAS_SSH_KEY_DIR) or `agent:SHA256:…`, a key of the
  worker's ssh-agent.
- Connection errors are retried with tenacity (exponential backoff, jitter, a deadline); a refused
  host key or a refused login is permanent (FleetRefused).
- No control plane: maintenance mode is the `ssh_hosts.in_maintenance` flag (what `status` reports; it can
  be read while the host is down) mirrored by the file /etc/patchaas/maintenance on the host (for the
  host's monitoring and cron jobs); power on/off are refused.
- A cycle runs detached on the host (`linux_cycle.CYCLE_SCRIPT`): `invoke_package` starts it and returns;
  `cycle_result` reads its JSON report; both idempotent per key (the run directory is named by the key).
- "Back after a reboot" is a changed /proc/sys/kernel/random/boot_id, read over SSH.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import paramiko
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential, wait_random

from orchestrator.persistence import db, models
from orchestrator.ports import FleetError, FleetRefused
from orchestrator.settings import Settings
from schemas import selection
from schemas.fleet import CycleReport, PackageRun, PowerState, ResultCode, ServerStatus, SettleStatus
from schemas.hooks import CommandResult
from workers.fleet import linux_checks, linux_cycle, ssh_hooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SshConfig:
    """The driver's settings (from PATCHAAS_SSH_*)."""

    known_hosts: str | None = None
    key_dir: str | None = None
    accept_unknown_host_keys: bool = False  # tests only
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    retry_attempts: int = 4
    retry_initial: float = 0.5
    retry_max_backoff: float = 5.0
    retry_deadline: float = 30.0
    reboot_command: str = "systemctl reboot"
    yum_excludes: tuple[str, ...] = linux_cycle.DEFAULT_YUM_EXCLUDES
    apt_excludes: tuple[str, ...] = ()
    settle_degraded: bool = True  # after a reboot, `systemctl is-system-running` degraded counts as settled

    @classmethod
    def from_settings(cls, settings: Settings) -> SshConfig:
        return cls(
            known_hosts=settings.ssh_known_hosts,
            key_dir=settings.ssh_key_dir,
            accept_unknown_host_keys=settings.ssh_accept_unknown_host_keys,
            connect_timeout=settings.ssh_connect_timeout_seconds,
            command_timeout=settings.ssh_command_timeout_seconds,
            retry_attempts=settings.ssh_retry_attempts,
            retry_initial=settings.ssh_retry_initial_seconds,
            retry_max_backoff=settings.ssh_retry_max_backoff_seconds,
            retry_deadline=settings.ssh_retry_deadline_seconds,
            reboot_command=settings.ssh_reboot_command,
            yum_excludes=tuple(settings.ssh_yum_excludes.split()),
            apt_excludes=tuple(settings.ssh_apt_excludes.split()),
            settle_degraded=settings.ssh_settle_degraded,
        )


@dataclass(frozen=True)
class HostInfo:
    """One row of ssh_hosts, as plain values."""

    server: str
    host: str
    port: int
    username: str
    key_ref: str
    package_manager: str
    in_maintenance: bool
    host_key: str | None = None  # the SHA256 fingerprint pinned for this host (orchestrator/services/ssh_hosts.py)


class _PinnedKey(paramiko.MissingHostKeyPolicy):
    """A host missing from known_hosts is accepted only with the fingerprint registered for it."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key.fingerprint != self.fingerprint:
            raise paramiko.SSHException(f"Server {hostname!r} not found in known_hosts and its key "
                                        f"{key.fingerprint} is not the pinned {self.fingerprint}")


class _Unreachable(FleetError):
    """A connection-level failure: worth a retry."""


def _retryable(error: BaseException) -> bool:
    return isinstance(error, _Unreachable)


class SshFleet:
    """The Fleet protocol for Linux hosts reached over SSH."""

    def __init__(self, sessions: sessionmaker[Session], config: SshConfig,
                 clock: Callable[[], datetime] = db.utcnow) -> None:
        if not config.known_hosts and not config.accept_unknown_host_keys:
            raise ValueError("the ssh fleet needs PATCHAAS_SSH_KNOWN_HOSTS (host keys are pinned)")
        self.sessions = sessions
        self.config = config
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> SshFleet:
        return cls(db.session_factory(db.create_engine_for(settings.database_url)), SshConfig.from_settings(settings))

    # --- the Fleet protocol -------------------------------------------------------------------

    def status(self, server: str) -> ServerStatus:
        info = self._host(server)
        os_type = self._os_type(server)
        try:
            out = self._run(info, linux_cycle.status_command(info.package_manager), attempts=2, deadline=5.0)
            boot_id, pending = linux_cycle.parse_status(out)
            up = True
        except FleetRefused:
            raise
        except (FleetError, linux_cycle.ProbeError) as error:
            log.info("%s: not answering over SSH (%s): reported down", server, error)
            boot_id, pending, up = "", False, False
        return ServerStatus(name=server, os_type=os_type, power_state=PowerState.STARTED,
                            in_maintenance=info.in_maintenance, up=up, boot_id=boot_id, pending_reboot=pending)

    def settled(self, server: str) -> SettleStatus:
        """`systemctl is-system-running` (and the boot id) over SSH; not answering is not up."""
        info = self._host(server)
        try:
            out = self._run(info, linux_checks.SETTLE_COMMAND, attempts=2, deadline=5.0)
        except FleetRefused:
            raise
        except FleetError as error:
            return SettleStatus(up=False, boot_id="", idle=False, detail=f"not answering over SSH ({error})")
        try:
            return linux_checks.parse_settle(out, self.config.settle_degraded)
        except ValueError as error:
            raise FleetError(f"{server}: {error}") from None

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        info = self._host(server)
        self._run(info, linux_cycle.maintenance_command(on, key))
        with self.sessions.begin() as session:
            session.execute(sa.update(models.SshHost).where(models.SshHost.server_name == server)
                            .values(in_maintenance=on, updated_at=self.clock()))

    def power_on(self, server: str, key: str) -> None:
        raise FleetRefused(f"{server} is reached over SSH and has no control plane: it cannot be powered on")

    def power_off(self, server: str, key: str) -> None:
        raise FleetRefused(f"{server} is reached over SSH and has no control plane: it cannot be powered off")

    def run_command(self, server: str, key: str, command: str, timeout: float) -> CommandResult:
        """A hook's command as root, idempotent per key on the host (workers/fleet/ssh_hooks.py)."""
        info = self._host(server)
        out = self._run(info, ssh_hooks.invocation(key, command, timeout), stdin=ssh_hooks.WRAPPER)
        return ssh_hooks.parse(server, out)

    def reboot(self, server: str, key: str) -> None:
        info = self._host(server)
        self._run(info, linux_cycle.reboot_command(self.config.reboot_command, key))

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        info = self._host(server)
        defaults = self.config.apt_excludes if info.package_manager == "apt" else self.config.yum_excludes
        try:  # the configured globs, the run's packageExclusions, and the packages it quarantined
            chosen = selection.selection_of(run.parameters).package_exclusions
            excludes = linux_cycle.exclusions(info.package_manager, (*chosen, *run.exclude_kbs), defaults)
        except ValueError as error:
            raise FleetRefused(str(error)) from error
        command = linux_cycle.invoke_command(info.package_manager, key, excludes)
        out = self._run(info, command, stdin=linux_cycle.CYCLE_SCRIPT)
        if out.strip() not in ("STARTED", "EXISTS"):
            raise FleetError(f"{server}: unexpected answer starting cycle {key}: {out.strip()[:200]!r}")
        log.info("%s: cycle %s %s (%s, excluding %s)", server, key, out.strip().lower(), info.package_manager,
                 " ".join(excludes) or "nothing")

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        info = self._host(server)
        out = self._run(info, linux_cycle.probe_command(key))
        try:
            report = linux_cycle.parse_probe(out, key, self.clock())
        except linux_cycle.ProbeError as error:
            raise FleetError(f"{server}: {error}") from error
        if report is not None and report.result_code is ResultCode.ABORTED:
            log.warning("%s: cycle %s aborted: its process is gone without a report, or the host rebooted under it",
                        server, key)
        elif report is not None and report.result_code >= 4 and not report.updates:
            log.warning("%s: cycle %s: the refresh failed: %s", server, key, linux_cycle.refresh_output(out)[-500:])
        return report

    # --- plumbing -----------------------------------------------------------------------------

    def _host(self, server: str) -> HostInfo:
        with self.sessions() as session:
            row = session.get(models.SshHost, server)
            if row is None:
                raise FleetRefused(f"{server} has no SSH connection details (ssh_hosts)")
            return HostInfo(row.server_name, row.host, row.port, row.username, row.key_ref, row.package_manager,
                            row.in_maintenance, row.host_key_fingerprint)

    def _os_type(self, server: str) -> str:
        with self.sessions() as session:
            row = session.get(models.Server, server)
            return row.os_type if row is not None else "Linux"

    @staticmethod
    def agent_key(key_ref: str, agent: paramiko.Agent) -> paramiko.PKey:
        """The key an `agent:SHA256:…` reference names, from the worker's ssh-agent (SSH_AUTH_SOCK). The agent
        signs the login with it: keep `agent` open until the connection is authenticated."""
        fingerprint = key_ref.removeprefix("agent:")
        for key in agent.get_keys():
            if key.fingerprint == fingerprint:
                return key
        raise FleetRefused(f"no key {fingerprint} in the worker's ssh-agent (SSH_AUTH_SOCK)")

    def key_path(self, key_ref: str) -> str:
        """The private key file a reference names: an absolute path, or a file in the key directory."""
        if os.path.isabs(key_ref):
            return key_ref
        if not self.config.key_dir:
            raise FleetRefused(f"key reference {key_ref!r} is relative but PATCHAAS_SSH_KEY_DIR is not set")
        base = Path(self.config.key_dir).resolve()
        path = (base / key_ref).resolve()
        if base not in path.parents:
            raise FleetRefused(f"key reference {key_ref!r} leaves PATCHAAS_SSH_KEY_DIR")
        return str(path)

    def _connect(self, info: HostInfo) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.config.known_hosts:
            client.load_host_keys(self.config.known_hosts)
        if info.host_key:
            client.set_missing_host_key_policy(_PinnedKey(info.host_key))
        elif self.config.accept_unknown_host_keys:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        agent = paramiko.Agent() if info.key_ref.startswith("agent:") else None
        try:
            if agent is not None:
                credentials: dict[str, object] = {"pkey": self.agent_key(info.key_ref, agent)}
            else:
                credentials = {"key_filename": self.key_path(info.key_ref)}
            client.connect(
                info.host, port=info.port, username=info.username, **credentials,  # type: ignore[arg-type]
                look_for_keys=False, allow_agent=False, timeout=self.config.connect_timeout,
                banner_timeout=self.config.connect_timeout, auth_timeout=self.config.connect_timeout,
            )
            transport = client.get_transport()
            presented = transport.get_remote_server_key().fingerprint if transport else None
            if info.host_key and presented != info.host_key:  # known_hosts had it, under another key
                client.close()
                raise FleetRefused(f"{info.server}: host key of {info.host}:{info.port} ({presented}) is not the "
                                   f"pinned {info.host_key} (refusing to connect)")
        except paramiko.BadHostKeyException as error:
            client.close()
            raise FleetRefused(f"{info.server}: host key of {info.host}:{info.port} does not match known_hosts "
                               "(refusing to connect)") from error
        except paramiko.AuthenticationException as error:
            # paramiko also says "Authentication failed" when the connection drops during the login (a host
            # going down for its reboot): only a refusal on a live connection is permanent
            transport = client.get_transport()
            refused = transport is not None and transport.is_active()
            client.close()
            if not refused:
                raise _Unreachable(f"{info.server}: {info.host}:{info.port} closed the connection during the login") \
                    from error
            raise FleetRefused(f"{info.server}: login as {info.username} at {info.host}:{info.port} refused") \
                from error
        except paramiko.SSHException as error:
            client.close()
            if "not found in known_hosts" in str(error):
                raise FleetRefused(f"{info.server}: {info.host}:{info.port} is not in known_hosts "
                                   "(host keys are pinned)") from error
            raise _Unreachable(f"{info.server}: SSH to {info.host}:{info.port} failed: {error}") from error
        except (OSError, EOFError) as error:
            client.close()
            raise _Unreachable(f"{info.server}: cannot reach {info.host}:{info.port}: {error}") from error
        except FleetRefused:
            client.close()
            raise
        finally:
            if agent is not None:  # the login is signed (or failed): the agent is not needed any more
                agent.close()
        return client

    def _run_once(self, info: HostInfo, command: str, stdin: str | None) -> str:
        client = self._connect(info)
        try:
            full = linux_cycle.as_root(command, info.username)
            chan_in, chan_out, chan_err = client.exec_command(full, timeout=self.config.command_timeout)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            out = chan_out.read().decode("utf-8", errors="replace")
            err = chan_err.read().decode("utf-8", errors="replace")
            code = chan_out.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise _Unreachable(f"{info.server}: SSH command failed: {error}") from error
        finally:
            client.close()
        if code != 0:
            raise FleetError(f"{info.server}: remote command exited {code}: {err.strip()[-300:]}")
        return out

    def _run(self, info: HostInfo, command: str, stdin: str | None = None, attempts: int | None = None,
             deadline: float | None = None) -> str:
        for attempt in Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(attempts or self.config.retry_attempts)
            | stop_after_delay(deadline or self.config.retry_deadline),
            # exponential backoff with jitter (tenacity 9 deprecates wait_exponential_jitter's `initial`)
            wait=wait_exponential(multiplier=self.config.retry_initial, max=self.config.retry_max_backoff)
            + wait_random(0, self.config.retry_initial),
            reraise=True,
        ):
            with attempt:
                return self._run_once(info, command, stdin)
        raise AssertionError("unreachable")  # pragma: no cover


def register_host(session: Session, server: str, host: str, port: int, username: str, key_ref: str,
                  package_manager: str, now: datetime) -> models.SshHost:
    """Add or update a server's SSH connection details (a key reference, never the key)."""
    linux_cycle.check_package_manager(package_manager)
    if "PRIVATE KEY" in key_ref:
        raise ValueError("key_ref names a key file; it must not be the key itself")
    row = session.get(models.SshHost, server)
    if row is None:
        row = models.SshHost(server_name=server, in_maintenance=False, created_at=now)
        session.add(row)
    row.host, row.port, row.username, row.key_ref = host, port, username, key_ref
    row.package_manager, row.updated_at = package_manager, now
    return row
