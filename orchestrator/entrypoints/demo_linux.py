"""`patchaas demo --linux`: real Linux test hosts patched over SSH beside the simulated Windows fleet.

The hosts are built by the same script as the e2e tests (`scripts/linux-test-hosts`, see docs/LINUX.md): two
Debian hosts (apt) and two RPM-family hosts (Debian's dnf + rpm), each an overlay root in its own mount and pid
namespaces with its own sshd on a loopback address, their repositories served over HTTP on loopback. That
needs root (debootstrap, namespaces, mounts); the first run builds the cached roots (~1 to 2 minutes each),
later runs start the hosts in about a second. Nothing reboots this machine: a host's `reboot` is a shim that
restarts that host's sshd and changes its boot id.

The servers are registered as an operator would (`orchestrator.ssh_hosts.add`: a key reference and the
host's key pinned by fingerprint), the run goes through the routing fleet (Windows → the simulated fleet,
Linux → the `ssh` driver), Apt Update on the Debian hosts and Yum Update on the RPM hosts, both with a
`packageExclusions` parameter.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from orchestrator.domain import packages
from orchestrator.services import inventory, ssh_hosts
from schemas.patching import PackageRequest

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from orchestrator.bootstrap import Container
    from orchestrator.ports import Fleet
    from orchestrator.settings import Settings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "linux-test-hosts"
GROUP = ("va1-0009", "Linux (real test hosts over SSH)")
DEBIAN = "Debian 12 64-bit"
RHEL = "RedHat Enterprise Linux 9 64-bit"


@dataclass(frozen=True)
class DemoHost:
    server: str
    os_type: str
    package_manager: str
    host: str
    address: str
    packages: tuple[str, ...]


HOSTS = (
    DemoHost("VA1OSDDEB01", DEBIAN, "apt", "deb1", "127.0.0.61", ("pt-hello", "pt-reboot", "pt-excluded")),
    DemoHost("VA1OSDDEB02", DEBIAN, "apt", "deb2", "127.0.0.62", ("pt-hello", "pt-fails")),
    DemoHost("VA1OSDRPM01", RHEL, "dnf", "dnf1", "127.0.0.63", ("pt-hello", "pt-reboot", "pt-excluded")),
    DemoHost("VA1OSDRPM02", RHEL, "dnf", "dnf2", "127.0.0.64", ("pt-hello", "pt-fails")),
)
EXCLUSIONS = ["pt-excluded"]  # the run's packageExclusions (beside the driver's kernel* nss* for yum)


def unavailable() -> str | None:
    """Why the Linux test hosts cannot be built here (None when they can)."""
    if os.geteuid() != 0:
        return ("--linux builds real Linux test hosts (debootstrap, mount and pid namespaces): run the demo as "
                "root, e.g. `sudo .venv/bin/patchaas demo --linux`")
    if not SCRIPT.exists():
        return f"--linux needs the test host script {SCRIPT} (a source checkout of patchaas)"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "--linux needs util-linux's unshare and nsenter"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "--linux needs overlayfs"
    if shutil.which("apt-get") is None:
        return "--linux builds its hosts with Debian's tools (apt-get, debootstrap): run it on Debian or Ubuntu"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LinuxDemo:
    """The running test hosts: the script's directory, its client key and known_hosts, each host's port."""

    dir: Path
    ports: dict[str, int] = field(default_factory=dict)

    def script(self, *args: str, timeout: float = 1800) -> str:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"linux-test-hosts {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def fleet(self, settings: Settings, windows: Fleet) -> Fleet:
        """The routing fleet: Windows servers to `windows`, Linux servers to the ssh driver (host keys pinned)."""
        from orchestrator.persistence import db
        from workers.fleet import linux_cycle, routing, ssh

        config = ssh.SshConfig(known_hosts=str(self.dir / "known_hosts"), key_dir=str(self.dir),
                               connect_timeout=3, retry_initial=0.2, retry_deadline=8,
                               yum_excludes=linux_cycle.DEFAULT_YUM_EXCLUDES)
        sessions = db.session_factory(db.create_engine_for(settings.database_url))
        return routing.RoutingFleet.from_settings(settings, windows=windows, linux=ssh.SshFleet(sessions, config))

    def register(self, session: Session, alias: str, now: datetime) -> None:
        """The Linux servers in the inventory (their own group), their SSH details as an operator adds them."""
        inventory.ensure_group(session, alias, GROUP[0], GROUP[1])
        inventory.register_servers(session, alias, (
            inventory.ServerSpec(h.server, h.os_type, "started", GROUP[0]) for h in HOSTS))
        session.flush()
        for h in HOSTS:
            public = (self.dir / "hosts" / h.host / "upper/etc/ssh/ssh_host_ed25519_key.pub").read_text()
            spec = ssh_hosts.spec_from({"server": h.server, "host": h.address, "port": self.ports[h.host],
                                        "username": "root", "key_ref": "id_ed25519",
                                        "package_manager": h.package_manager, "host_key": public})
            ssh_hosts.add(session, alias, spec, now)

    def execute(self, container: Container, alias: str, console: Console) -> list[Any]:
        """Apt Update on the Debian hosts, Yum Update on the RPM hosts; the queued answers."""
        answers: list[Any] = []
        for package_id, pm in ((packages.APT_UPDATE, "apt"), (packages.YUM_UPDATE, "dnf")):
            servers = [h.server for h in HOSTS if h.package_manager == pm]
            parameters: dict[str, object] = {"packageExclusions": EXCLUSIONS}
            name = packages.get(package_id).name
            console.print(f"Linux: {name} on {', '.join(servers)} over SSH (packageExclusions {EXCLUSIONS})")
            answers += container.service.execute_package(
                alias, servers, PackageRequest(packageId=package_id, parameters=parameters), requested_by="demo")
        return answers

    def installed(self) -> dict[str, str]:
        """What each host's package database says of the pt-* packages afterwards (read inside the host)."""
        shown: dict[str, str] = {}
        for h in HOSTS:
            if h.package_manager == "apt":
                out = self.script("exec", str(self.dir), h.host, "dpkg-query", "-W", "-f=${Package} ${Version} "
                                  "${db:Status-Abbrev}\n", *h.packages)
            else:
                out = self.script("exec", str(self.dir), h.host, "rpm", "-q", "--qf",
                                  "%{NAME} %{VERSION}-%{RELEASE}\n", *h.packages)
            boots = self.script("exec", str(self.dir), h.host, "cat", "/var/log/patchaas-test-boots").count(" boot ")
            shown[h.server] = "; ".join(line.strip() for line in out.splitlines()) + f"; reboots: {boots - 1}"
        return shown


@contextmanager
def running_hosts(workdir: Path, console: Console) -> Iterator[LinuxDemo]:
    """Build (first time: cache the roots) and start the four hosts; stop them afterwards."""
    demo = LinuxDemo(workdir / "linux-hosts")
    if demo.dir.exists():
        subprocess.run([str(SCRIPT), "down", str(demo.dir)], capture_output=True, timeout=120)
        shutil.rmtree(demo.dir)
    demo.dir.mkdir(parents=True)
    console.print("Linux test hosts: cached roots (debootstrap on first use: a minute or two each) ...")
    demo.script("base")
    demo.script("base", "dnf")
    demo.script("repo", str(demo.dir))
    demo.script("rpm-repo", str(demo.dir))
    port = _free_port()
    try:
        demo.script("serve", str(demo.dir), "127.0.0.1", str(port))
        demo.script("keys", str(demo.dir))
        for h in HOSTS:
            demo.ports[h.host] = _free_port()
            flavour = ["--dnf"] if h.package_manager == "dnf" else []
            demo.script("up", *flavour, str(demo.dir), h.host, h.address, str(demo.ports[h.host]),
                        f"http://127.0.0.1:{port}/", *h.packages)
            console.print(f"  {h.server}: {h.os_type} test host {h.host} on {h.address}:{demo.ports[h.host]} "
                          f"({h.package_manager}; {', '.join(h.packages)} at 1.0, 1.1 published)")
        yield demo
    finally:
        subprocess.run([str(SCRIPT), "down", str(demo.dir)], capture_output=True, timeout=120)
