"""`patchaas demo --linux`: real Linux test hosts (2 Debian, 2 dnf; scripts/linux-test-hosts) patched over SSH
beside the simulated Windows fleet, on the embedded default. Without root it refuses clearly (exit code 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from orchestrator.entrypoints import demo, demo_linux
from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.persistence import models
from tests.e2e.harness import linux_hosts_unavailable


def test_without_root_the_linux_demo_refuses_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(demo_linux.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli_app, ["demo", "--linux", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "run the demo as root" in result.output
    assert not (tmp_path / "demo.db").exists() and not (tmp_path / "linux-hosts").exists()


@pytest.mark.skipif(linux_hosts_unavailable() is not None, reason=str(linux_hosts_unavailable()))
def test_the_linux_demo_patches_real_hosts_beside_the_simulated_fleet(tmp_path: Path) -> None:
    out = io.StringIO()
    code = demo.run(tmp_path, timeout=150, console=Console(file=out, width=200), linux=True)
    text = out.getvalue()
    assert code == 0, text[-4000:]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    with engine.connect() as conn:
        ended = dict(conn.execute(sa.select(models.Execution.server_name, models.Execution.state)).all())
        hosts = {r.server_name: r for r in conn.execute(sa.select(models.SshHost)).all()}
    engine.dispose()
    assert {s: ended[s] for s in ("VA1OSDDEB01", "VA1OSDDEB02", "VA1OSDRPM01", "VA1OSDRPM02")} == {
        "VA1OSDDEB01": "completed", "VA1OSDDEB02": "failed", "VA1OSDRPM01": "completed", "VA1OSDRPM02": "failed"}
    assert sum(1 for s in ended if s.startswith("VA1OSDPATCH")) >= 10  # the simulated Windows fleet beside them
    assert all(h.host_key_fingerprint and h.host_key_fingerprint.startswith("SHA256:") for h in hosts.values())
    # read inside the hosts after the run: exclusions honoured, one reboot where a package asked for it
    assert "VA1OSDDEB01 (read inside the host): pt-excluded 1.0 ii; pt-hello 1.1 ii; pt-reboot 1.1 ii; reboots: 1" \
        in text
    assert "VA1OSDRPM01 (read inside the host): pt-hello 1.1-1; pt-reboot 1.1-1; pt-excluded 1.0-1; reboots: 1" \
        in text
    assert not (tmp_path / "linux-hosts" / "http.pid").exists()  # the hosts and the repository were stopped
