"""Real RPM-family hosts patched over SSH with dnf: two test hosts on this machine built from a cached
debootstrap root carrying Debian's dnf, rpm and dnf-plugins-core, each with its own sshd on a loopback
address, and a dnf repository (RPMs built with rpmbuild, metadata by createrepo_c) served over HTTP on
loopback (scripts/linux-test-hosts --dnf). The hosts are registered with `patchaas ssh-host add`, their host
keys pinned by fingerprint in the database (the workers' known_hosts file is empty), one host's private key
a file, the other's a key of the workers' ssh-agent. Real worker and beat processes drive them with the Yum
Update package through the same state machine, API and emails as Windows. Afterwards rpm on each host, read
without the driver, agrees with the patch records; the package that declares itself reboot-requiring (as
kernel and glibc are, for `dnf needs-restarting -r`) led to exactly one reboot and a second cycle that found
nothing; the package whose %post fails is recorded failed with rpm's output while the rest installed; the
run's `packageExclusions` parameter kept pt-excluded at 1.0."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from orchestrator.domain import messages, packages
from orchestrator.entrypoints.api import Patchaas
from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.persistence import models
from orchestrator.ports import FleetRefused
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
from workers.fleet.ssh import HostInfo, SshConfig, SshFleet

pytestmark = pytest.mark.skipif(linux_hosts_unavailable() is not None, reason=str(linux_hosts_unavailable()))

# server → (test host, address, packages installed at 1.0; every one has 1.1 in the dnf repository)
HOSTS = {
    "VA1OSDRPM01": ("dnf1", "127.0.0.31", ["pt-hello", "pt-reboot", "pt-excluded"]),  # reboot, then nothing
    "VA1OSDRPM02": ("dnf2", "127.0.0.32", ["pt-hello", "pt-fails", "pt-excluded"]),  # %post fails; the rest installs
}
EXPECTED = {"VA1OSDRPM01": "completed", "VA1OSDRPM02": "failed"}
DRIVER = {
    # the driver's defaults (the original's kernel* nss*) stay; pt-excluded comes from the run's parameters
    "PATCHAAS_SSH_YUM_EXCLUDES": "kernel* nss*",
    "PATCHAAS_SSH_CONNECT_TIMEOUT_SECONDS": "3",
    "PATCHAAS_SSH_RETRY_INITIAL_SECONDS": "0.2",
    "PATCHAAS_SSH_RETRY_DEADLINE_SECONDS": "8",
    "PATCHAAS_LEASE_SECONDS": "40",
    "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "60",
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "120",
    "PATCHAAS_POLL_INTERVAL_SECONDS": "0.5",
    "PATCHAAS_SETTLE_SECONDS": "0.5",
}


@pytest.fixture
def dnf_hosts(tmp_path: Path) -> Iterator[LinuxTestHosts]:
    hosts = LinuxTestHosts.start(tmp_path / "linux", dnf=True)
    try:
        for host, address, pkgs in HOSTS.values():
            hosts.up(host, address, pkgs, dnf=True)
        yield hosts
    finally:
        hosts.stop()


@pytest.fixture
def ssh_agent(dnf_hosts: LinuxTestHosts) -> Iterator[tuple[str, str]]:
    """An ssh-agent holding the test key: (its socket, the key's SHA256 fingerprint)."""
    sock = str(dnf_hosts.dir / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: Path(sock).exists(), timeout=10)
        subprocess.run(["ssh-add", "-q", str(dnf_hosts.key)], env={**os.environ, "SSH_AUTH_SOCK": sock},
                       check=True, capture_output=True)
        yield sock, paramiko.Ed25519Key.from_private_key_file(str(dnf_hosts.key)).fingerprint
    finally:
        agent.terminate()
        agent.wait(timeout=10)


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


def test_dnf_hosts_are_patched_over_ssh(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, dnf_hosts: LinuxTestHosts,
    ssh_agent: tuple[str, str],
) -> None:
    hosts = dnf_hosts
    # the hosts really are RPM hosts: dnf and the rpm database (not dpkg) hold the test packages
    for host, _, installed_before in HOSTS.values():
        assert {p: v for p, v in hosts.rpm_installed(host).items() if p.startswith("pt-")} == \
            dict.fromkeys(installed_before, "1.0-1")
    register_linux_hosts(pg, hosts, {server: host for server, (host, _, _) in HOSTS.items()},
                         os_type="RedHat Enterprise Linux 9 64-bit", package_manager="dnf")
    # then as an operator would: `patchaas ssh-host add` with each host's key pinned by the database alone
    # (the workers' known_hosts file is empty); RPM01's key is a file, RPM02's the workers' ssh-agent's
    agent_sock, agent_fingerprint = ssh_agent
    key_refs = {"VA1OSDRPM01": hosts.key.name, "VA1OSDRPM02": f"agent:{agent_fingerprint}"}
    for server, (host, _, _) in HOSTS.items():
        address, port = hosts.hosts[host]
        public = (hosts.dir / "hosts" / host / "upper/etc/ssh/ssh_host_ed25519_key.pub").read_text()
        done = CliRunner().invoke(cli_app, [
            "ssh-host", "add", server, "--alias", "OSD", "--host", address, "--port", str(port),
            "--key", key_refs[server], "--pm", "dnf", "--host-key", public,
        ], env={"PATCHAAS_DATABASE_URL": pg})
        assert done.exit_code == 0, done.output
    empty_known_hosts = hosts.dir / "known_hosts.empty"
    empty_known_hosts.write_text("")
    # a wrong pin is refused over the real connection, never accepted
    address, port = hosts.hosts["dnf1"]
    pinned = SshFleet(sessions=None, config=SshConfig(known_hosts=str(empty_known_hosts),  # type: ignore[arg-type]
                                                      key_dir=str(hosts.dir), connect_timeout=3))
    wrong = HostInfo("VA1OSDRPM01", address, port, "root", hosts.key.name, "dnf", False, "SHA256:" + "A" * 43)
    with pytest.raises(FleetRefused, match="not in known_hosts"):
        pinned._run(wrong, "true", attempts=1)
    use_ssh_fleet(cluster, hosts, **DRIVER)
    cluster.env["PATCHAAS_SSH_KNOWN_HOSTS"] = str(empty_known_hosts)
    cluster.env["SSH_AUTH_SOCK"] = agent_sock
    cluster.start_worker("w1", concurrency=2)
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups(
            "OSD", ["va1-0001"], package_id=packages.YUM_UPDATE, parameters={"packageExclusions": ["pt-excl*"]}
        )
        assert len(answers) == 2 and all(a.is_queued for a in answers), answers
        wait_until(lambda: not active_executions(pg), timeout=180, interval=0.5,
                   on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-4000:]}")
        ids = {a.server: str(a.execution_id) for a in answers}
        for server, (host, _, installed_before) in HOSTS.items():
            detail = patching.detail("OSD", server, ids[server])
            assert detail.status == EXPECTED[server], (server, detail.failure_reason, cluster.log("w1")[-3000:])
            (summary,) = [s for s in patching.history("OSD", server) if s.execution_id == ids[server]]
            assert {m.init_begin_message for m in summary.init_messages} == {messages.INIT_BEGIN_YUM}
            rows = patch_rows(pg, ids[server])
            story = (server, detail.failure_reason, [(m.cycle, m.init_end_message, m.reboot_required)
                                                     for m in summary.init_messages],
                     [(r.cycle, r.kb, r.status, r.hresult) for r in rows])
            rpm = hosts.rpm_installed(host)  # read inside the host, not through the driver
            for row in rows:
                assert row.from_version == "1.0-1" or row.status == "failed", (row.kb, row.from_version)
                # rpm has no half-configured state: a failed %post leaves 1.1 installed; the record says
                # failed, with the scriptlet's exit status and output
                assert rpm[row.kb] == row.to_version == "1.1-1", (row.kb, rpm.get(row.kb), row.to_version)
                if row.status == "completed":
                    assert row.output is None
            completed = {r.kb for r in rows if r.status == "completed"}
            assert completed == {p for p in installed_before if p in ("pt-hello", "pt-reboot")}, story
            assert {p for p, v in rpm.items() if p.startswith("pt-") and v == "1.1-1"} == \
                completed | {r.kb for r in rows if r.status == "failed"}
            assert rpm["pt-excluded"] == "1.0-1"  # the run's packageExclusions
            assert "pt-excluded" not in {r.kb for r in rows}
            failed = [r for r in rows if r.status == "failed"]
            if "pt-fails" in installed_before:
                # failed twice (the upgrade in cycle 1, its scriptlet re-run by a reinstall in cycle 2), then
                # quarantined while the rest was installed
                assert [r.kb for r in failed] == ["pt-fails", "pt-fails"], story
                for r in failed:
                    assert "scriptlet failed, exit status 3" in (r.output or "") and "disk says no" in (r.output or "")
                    assert r.hresult == 3 and r.end_message == "Result Code: 4 (HRESULT 0x00000003)", story
                assert "pt-fails" in (detail.failure_reason or "")
            else:
                assert not failed, story
            # the reboot-requesting package: exactly one reboot, and the cycle after it found nothing new
            reboots = hosts.boots(host) - 1
            assert reboots == (1 if "pt-reboot" in installed_before else 0), (server, reboots, story)
            cycles = sorted(summary.init_messages, key=lambda m: m.cycle)
            assert cycles[-1].init_end_message == "Update Process Complete. There are 0 updates to install", story
            assert [m.reboot_required for m in cycles].count(True) == reboots, story
            assert {r.kb for r in rows if r.reboot_required} == ({"pt-reboot"} if reboots else set()), story
            if server == "VA1OSDRPM01":
                assert len(cycles) == 2 and cycles[0].updates_found == 2, (story, cluster.log("w1")[-3000:])
            assert hosts.exec(host, "sh", "-c", "test -e /etc/patchaas/maintenance || echo absent") == "absent\n"
        engine = sa.create_engine(pg)
        with engine.connect() as conn:
            assert not conn.execute(sa.select(models.SshHost).where(models.SshHost.in_maintenance)).all()
        engine.dispose()
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()
