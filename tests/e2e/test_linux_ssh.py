"""Real Debian hosts patched over SSH: three debootstrap roots on this machine, each with its own sshd on a
loopback address and an apt repository on loopback (scripts/linux-test-hosts). Real worker and beat
processes drive them through the same state machine, API and emails as Windows (PATCHAAS_FLEET=routing,
Linux → the ssh driver, host keys pinned). Afterwards dpkg on each host, read without the driver, agrees
with the patch records; the reboot-requesting package led to exactly one reboot and a second cycle that
found nothing; the failing package is recorded failed, with dpkg's output, while the rest installed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.domain import messages, packages
from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import models
from orchestrator.settings import Settings
from simulation.mailsink import MailSink
from tests.e2e.harness import (
    Cluster,
    LinuxTestHosts,
    active_executions,
    assert_one_start_and_one_end_email,
    linux_hosts_unavailable,
    register_linux_hosts,
    use_ssh_fleet,
    wait_until,
)

pytestmark = pytest.mark.skipif(linux_hosts_unavailable() is not None, reason=str(linux_hosts_unavailable()))

# server → (test host, address, packages installed at 1.0; every one has 1.1 in the repository)
HOSTS = {
    "VA1OSDDEB01": ("deb1", "127.0.0.21", ["pt-hello", "pt-reboot", "pt-excluded"]),  # reboot, then nothing
    "VA1OSDDEB02": ("deb2", "127.0.0.22", ["pt-hello", "pt-fails"]),  # postinst fails; the rest installs
    "VA1OSDDEB03": ("deb3", "127.0.0.23", ["pt-hello", "pt-reboot", "pt-fails", "pt-excluded"]),  # all at once
}
EXPECTED = {"VA1OSDDEB01": "completed", "VA1OSDDEB02": "failed", "VA1OSDDEB03": "failed"}
DRIVER = {
    "PATCHAAS_SSH_APT_EXCLUDES": "pt-excluded",
    "PATCHAAS_SSH_CONNECT_TIMEOUT_SECONDS": "3",
    "PATCHAAS_SSH_RETRY_INITIAL_SECONDS": "0.2",
    "PATCHAAS_SSH_RETRY_DEADLINE_SECONDS": "8",
    "PATCHAAS_LEASE_SECONDS": "40",  # above the driver's worst case for one call
    "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "60",
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "120",
    "PATCHAAS_POLL_INTERVAL_SECONDS": "0.5",
    "PATCHAAS_SETTLE_SECONDS": "0.5",
}


@pytest.fixture
def linux_hosts(tmp_path: Path) -> Iterator[LinuxTestHosts]:
    hosts = LinuxTestHosts.start(tmp_path / "linux")
    try:
        for host, address, pkgs in HOSTS.values():
            hosts.up(host, address, pkgs)
        yield hosts
    finally:
        hosts.stop()


def patch_rows(database_url: str, execution_id: str) -> list[models.Patch]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(models.Patch).where(models.Patch.execution_id == execution_id).order_by(models.Patch.id)
            ).all()
        return list(rows)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def host_cycle_logs(hosts: LinuxTestHosts, host: str) -> str:
    """What the cycles wrote on the host (refresh output, the script's own log), for a failure's message."""
    return hosts.exec(host, "sh", "-c", "cd /var/lib/patchaas/runs 2>/dev/null && for f in */*.log; do "
                      "echo \"== $f\"; tail -n 30 \"$f\"; done; true")


def test_debian_hosts_are_patched_over_ssh(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, linux_hosts: LinuxTestHosts
) -> None:
    register_linux_hosts(pg, linux_hosts, {server: host for server, (host, _, _) in HOSTS.items()})
    use_ssh_fleet(cluster, linux_hosts, **DRIVER)
    cluster.start_worker("w1", concurrency=3)
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups("OSD", ["va1-0001"], package_id=packages.APT_UPDATE)
        assert len(answers) == 3 and all(a.is_queued for a in answers), answers
        wait_until(lambda: not active_executions(pg), timeout=180, interval=0.5,
                   on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-4000:]}")
        ids = {a.server: str(a.execution_id) for a in answers}
        for server, (host, _, installed_before) in HOSTS.items():
            detail = patching.detail("OSD", server, ids[server])
            assert detail.status == EXPECTED[server], (server, detail.failure_reason, cluster.log("w1")[-3000:])
            (summary,) = [s for s in patching.history("OSD", server) if s.execution_id == ids[server]]
            assert {m.init_begin_message for m in summary.init_messages} == {messages.INIT_BEGIN_APT}
            rows = patch_rows(pg, ids[server])
            story = (server, detail.failure_reason, [(m.cycle, m.init_end_message, m.reboot_required)
                                                     for m in summary.init_messages],
                     [(r.cycle, r.kb, r.status) for r in rows])
            dpkg = linux_hosts.installed(host)
            # dpkg agrees with the records: every package recorded installed is at its new version, clean
            for row in rows:
                status, version = dpkg[row.kb]
                if row.status == "completed":
                    assert status == "ii" and version == row.to_version == "1.1", (row.kb, status, version)
                    assert row.from_version == "1.0" and row.output is None
                else:
                    assert status != "ii", (row.kb, status)  # the failed postinst left it half-configured
            completed = {r.kb for r in rows if r.status == "completed"}
            assert completed == {p for p in installed_before if p in ("pt-hello", "pt-reboot")}, \
                (story, host_cycle_logs(linux_hosts, host))
            assert {p for p, (s, v) in dpkg.items() if p.startswith("pt-") and s == "ii" and v == "1.1"} == completed
            if "pt-excluded" in installed_before:
                assert dpkg["pt-excluded"] == ("ii", "1.0")  # excluded by PATCHAAS_SSH_APT_EXCLUDES
                assert "pt-excluded" not in {r.kb for r in rows}
            failed = [r for r in rows if r.status == "failed"]
            if "pt-fails" in installed_before:
                # failed twice (cycle 1, retried in cycle 2), then quarantined while the rest was installed
                assert [r.kb for r in failed] == ["pt-fails", "pt-fails"], story
                assert all("post-installation script subprocess returned error exit status 3" in (r.output or "")
                           and "disk says no" in (r.output or "") for r in failed)
                assert "pt-fails" in (detail.failure_reason or "")
            else:
                assert not failed
            # the reboot-requesting package: exactly one reboot, and the cycle after it found nothing new
            reboots = linux_hosts.boots(host) - 1
            assert reboots == (1 if "pt-reboot" in installed_before else 0), (server, reboots)
            cycles = sorted(summary.init_messages, key=lambda m: m.cycle)
            assert cycles[-1].init_end_message == "Update Process Complete. There are 0 updates to install"
            assert [m.reboot_required for m in cycles].count(True) == reboots
            if server == "VA1OSDDEB01":
                assert len(cycles) == 2 and cycles[0].updates_found == 2, (story, cluster.log("w1")[-3000:])
            # maintenance: on during the run (flag file), off afterwards in the database and on the host
            assert linux_hosts.exec(host, "sh", "-c", "test -e /etc/patchaas/maintenance || echo absent") \
                == "absent\n"
        engine = sa.create_engine(pg)
        with engine.connect() as conn:
            assert not conn.execute(sa.select(models.SshHost).where(models.SshHost.in_maintenance)).all()
        engine.dispose()
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()


def execution_state(database_url: str, server: str) -> str | None:
    return next((state for _, name, state in active_executions(database_url) if name == server), None)


def test_sshd_dying_mid_cycle_is_ridden_out_or_fails_clearly(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, tmp_path: Path
) -> None:
    """While a cycle runs on the host (pt-slow's postinst takes 6 s), sshd is killed on two hosts. On deb4
    it comes back 3 s later: the driver's retries read the report the detached cycle wrote meanwhile and the
    run completes. On deb5 it never does: the run fails naming the unreachable host, and says that
    maintenance mode could not be turned off (the flag file is still on the host)."""
    hosts = LinuxTestHosts.start(tmp_path / "linux")
    try:
        for host, address in (("deb4", "127.0.0.24"), ("deb5", "127.0.0.25")):
            hosts.up(host, address, ["pt-hello", "pt-slow"])
        servers = {"VA1OSDDEB04": "deb4", "VA1OSDDEB05": "deb5"}
        register_linux_hosts(pg, hosts, servers)
        use_ssh_fleet(cluster, hosts, **DRIVER)
        cluster.start_worker("w1", concurrency=2)
        cluster.start_beat()
        patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
        try:
            answers = patching.execute_package_on_groups("OSD", ["va1-0001"], package_id=packages.APT_UPDATE)
            ids = {a.server: str(a.execution_id) for a in answers}
            wait_until(lambda: all(execution_state(pg, s) == "awaiting_result" for s in servers), timeout=60,
                       interval=0.1, on_timeout=lambda: f"{active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
            hosts.kill_sshd("deb4")
            hosts.kill_sshd("deb5")
            time.sleep(3)
            hosts.start_sshd("deb4")
            wait_until(lambda: not active_executions(pg), timeout=150, interval=0.5,
                       on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-4000:]}")
            back = patching.detail("OSD", "VA1OSDDEB04", ids["VA1OSDDEB04"])
            assert back.status == "completed", back.failure_reason
            assert hosts.installed("deb4")["pt-slow"] == ("ii", "1.1")
            assert {p.kb for p in back.patches if p.status == "completed"} == {"pt-hello", "pt-slow"}
            gone = patching.detail("OSD", "VA1OSDDEB05", ids["VA1OSDDEB05"])
            assert gone.status == "failed"
            reason = gone.failure_reason or ""
            assert "127.0.0.25" in reason and "cleanup stopped" in reason, reason
            assert hosts.installed("deb5")["pt-slow"] == ("ii", "1.1")  # the detached cycle finished anyway
        finally:
            patching.close()
    finally:
        hosts.stop()
