"""The dnf side of the Linux update package as real dnf showed it (tests/e2e/test_linux_dnf.py runs it for
real), a run's packageExclusions reaching the host, and the SSH host registration rules (pure, < 2 s)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import paramiko
import pytest

from orchestrator.ports import FleetRefused
from orchestrator.services import ssh_hosts
from schemas import selection
from schemas.fleet import PackageRun, ResultCode
from workers.fleet import linux_cycle as lc
from workers.fleet.ssh import HostInfo, SshConfig, SshFleet, _PinnedKey

# what Debian's dnf 4.14 printed upgrading a package whose %post exits 3 (tests/e2e/test_linux_dnf.py)
DNF_SCRIPTLET_FAILED = """\
Running transaction
  Preparing        :                                                        1/1
  Upgrading        : pt-fails-1.1-1.noarch                                  1/2
  Running scriptlet: pt-fails-1.1-1.noarch                                  1/2
pt-fails: cannot migrate /var/lib/pt-fails: disk says no
warning: %post(pt-fails-1.1-1.noarch) scriptlet failed, exit status 3

  Cleanup          : pt-fails-1.0-1.noarch                                  2/2
Upgraded:
  pt-fails-1.1-1.noarch
Complete!
Error in POSTIN scriptlet in rpm package pt-fails
"""
DNF_OK = "Upgraded:\n  pt-hello-1.1-1.noarch\n\nComplete!\n"


def lib(tmp_path: Path, snippet: str, stdin: str = "", path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "cycle.sh"
    script.write_text(lc.CYCLE_SCRIPT)
    return subprocess.run(["sh", "-c", '. "$0"; ' + snippet, str(script)], input=stdin, capture_output=True,
                          text=True, env={"PATCHAAS_LIB_ONLY": "1", "PATH": path}, cwd=tmp_path)


def test_a_dnf_listing_with_a_name_too_long_for_its_column_is_joined(tmp_path: Path) -> None:
    listing = ("\n"
               "pt-hello.noarch                  1.1-1                   patchaas-test\n"
               "python3-some-very-long-package-name-indeed.x86_64\n"
               "                                 2.0-3.el9               appstream\n"
               "bash.x86_64                      5.1.8-9.el9             baseos\n")
    assert lib(tmp_path, "dnf_upgradable", listing).stdout.splitlines() == [
        "pt-hello 1.1-1", "python3-some-very-long-package-name-indeed 2.0-3.el9", "bash 5.1.8-9.el9"]


def test_a_failed_rpm_scriptlet_is_seen_although_dnf_exits_0(tmp_path: Path) -> None:
    (tmp_path / "failed").write_text(DNF_SCRIPTLET_FAILED)
    (tmp_path / "ok").write_text(DNF_OK)
    assert lib(tmp_path, "rpm_scriptlet_failed failed").returncode == 0
    assert lib(tmp_path, "rpm_scriptlet_failed ok").returncode == 1
    # the script records the scriptlet's exit status as the package's result, and remembers the package
    assert "scriptlet failed, exit status \\([0-9][0-9]*\\)" in lc.CYCLE_SCRIPT
    assert 'op=reinstall' in lc.CYCLE_SCRIPT and "dnf_broken >> candidates" in lc.CYCLE_SCRIPT


def test_packages_whose_scriptlet_failed_are_offered_again_while_that_version_is_installed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_rpm = '#!/bin/sh\nfor n; do :; done\ncase "$n" in pt-fails) echo 1.1-1 ;; pt-moved) echo 2.0-1 ;; esac\n'
    (bin_dir / "rpm").write_text(fake_rpm)
    (bin_dir / "rpm").chmod(0o755)
    (tmp_path / "failed").write_text("pt-fails 1.1-1\npt-moved 1.1-1\n")
    done = lib(tmp_path, f'RPM_FAILED={tmp_path}/failed; dnf_broken', path=f"{bin_dir}:/usr/bin:/bin")
    assert done.stdout.splitlines() == ["pt-fails 1.1-1 1.1-1"]  # pt-moved was upgraded since: not retried


@pytest.mark.parametrize("answer,code,pending", [
    ("Core libraries or services have been updated since boot-up:\n  * pt-reboot\n", 1, True),
    ("No core libraries or services have been updated since boot-up.\n", 0, False),
    ("No such command: needs-restarting. Please use /usr/bin/dnf --help\n", 1, False),  # plugin missing
])
def test_the_dnf_reboot_signal_is_needs_restarting_unless_it_is_missing(
    tmp_path: Path, answer: str, code: int, pending: bool
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dnf"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}EOF\nexit {code}\n")
    fake.chmod(0o755)
    done = subprocess.run(["sh", "-c", lc.status_command("dnf")], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    boot_id, is_pending = lc.parse_status(done.stdout)
    assert boot_id and is_pending is pending


# --- the run's packageExclusions --------------------------------------------------------------------


def test_package_exclusions_are_a_run_parameter_of_safe_globs() -> None:
    assert selection.parse({"packageExclusions": "kernel*, pt-excl*"}).package_exclusions == ("kernel*", "pt-excl*")
    assert selection.selection_of({"packageExclusions": ["a"], "other": 1}).package_exclusions == ("a",)
    for bad in (["a;rm -rf /"], ["$(reboot)"], [""], ["x" * 101]):
        with pytest.raises(ValueError, match="packageExclusions"):
            selection.parse({"packageExclusions": bad})
    assert lc._SAFE_PATTERN is selection.SAFE_GLOB  # one rule for request time and for the driver


class _Recorder(SshFleet):
    def __init__(self, pm: str, config: SshConfig) -> None:
        super().__init__(sessions=None, config=config)  # type: ignore[arg-type]
        self.pm = pm
        self.commands: list[str] = []

    def _host(self, server: str) -> HostInfo:
        return HostInfo(server, "127.0.0.1", 22, "root", "k", self.pm, False)

    def _run(self, info: HostInfo, command: str, stdin: str | None = None, attempts: int | None = None,
             deadline: float | None = None) -> str:
        self.commands.append(command)
        return "STARTED\n"


def test_the_driver_merges_the_runs_exclusions_with_the_defaults_and_the_quarantined() -> None:
    fleet = _Recorder("dnf", SshConfig(known_hosts="/dev/null"))
    run = PackageRun(package_id="p", execution_id="VA1-000001", cycle=2, exclude_kbs=("pt-fails",),
                     parameters={"packageExclusions": ["pt-excl*", "kernel*"], "rebootPolicy": "if_required"})
    fleet.invoke_package("VA1OSDRPM01", "VA1-000001:package:2", run)
    assert "VA1-000001:package:2 'kernel*' 'nss*' 'pt-excl*' pt-fails" in fleet.commands[0]
    apt = _Recorder("apt", SshConfig(known_hosts="/dev/null", apt_excludes=("linux-image*",)))
    apt.invoke_package("VA1OSDDEB01", "k", run.model_copy(update={"exclude_kbs": ()}))
    assert "k 'linux-image*' 'pt-excl*' 'kernel*'" in apt.commands[0]


def test_unsafe_exclusions_that_bypassed_the_request_check_are_refused_by_the_driver() -> None:
    fleet = _Recorder("dnf", SshConfig(known_hosts="/dev/null"))
    run = PackageRun(package_id="p", execution_id="VA1-000001", cycle=1, parameters={"packageExclusions": ["a b"]})
    with pytest.raises(FleetRefused):
        fleet.invoke_package("VA1OSDRPM01", "k", run)
    assert fleet.commands == []


# --- SSH host registration rules and pinned host keys ---------------------------------------------------


@pytest.mark.parametrize("ref", ["/etc/patchaas/keys/web.key", "web.key", "prod/web-01.key",
                                 "agent:SHA256:JAvFLD7GHWMrX0xQBxjJgEQ/HrDYye5XC6Cdm8aT0LE",
                                 "agent:SHA256:gdiRddfn9B5jS0hFaCM+PlN2tAEgoUAomrXBM1b6qUw"])  # 40+ without "/"
def test_key_references_a_path_a_file_name_or_an_agent_key(ref: str) -> None:
    assert ssh_hosts.check_key_ref(ref) == ref


@pytest.mark.parametrize("ref", [
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExx/jFLVcaeXlw+GmUmg393CFKyq5lNjZPl18s4UJVu",
])
def test_key_material_is_refused_as_such(ref: str) -> None:
    with pytest.raises(ssh_hosts.KeyMaterialRefused):
        ssh_hosts.check_key_ref(ref)


@pytest.mark.parametrize("ref", ["../etc/shadow", "/etc/../shadow", ".hidden", "a//b", "agent:abc", "",
                                 "with space", "~/.ssh/id_rsa"])
def test_malformed_key_references_are_refused(ref: str) -> None:
    with pytest.raises(ValueError):
        ssh_hosts.check_key_ref(ref)


def test_host_keys_are_stored_as_their_sha256_fingerprint() -> None:
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExx/jFLVcaeXlw+GmUmg393CFKyq5lNjZPl18s4UJVu web01"
    expected = "SHA256:JAvFLD7GHWMrX0xQBxjJgEQ/HrDYye5XC6Cdm8aT0LE"  # ssh-keygen -lf
    assert ssh_hosts.fingerprint_of(public) == expected
    assert ssh_hosts.fingerprint_of("[10.0.0.5]:2222 " + public) == expected
    assert ssh_hosts.fingerprint_of(expected) == expected
    with pytest.raises(ValueError):
        ssh_hosts.fingerprint_of("ssh-ed25519 bm90IGEga2V5")  # base64, but not an ed25519 key blob
    message = str(pytest.raises(ValueError, ssh_hosts.spec_from, {
        "server": "VA1OSDDEB01", "host": "h", "key_ref": "-----BEGIN RSA PRIVATE KEY-----", "package_manager": "apt",
    }).value)
    assert "key_ref" in message and "BEGIN" not in message


def test_a_pinned_fingerprint_accepts_that_key_only() -> None:
    key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    key = key or paramiko.RSAKey.generate(1024)
    other = paramiko.RSAKey.generate(1024)
    policy = _PinnedKey(key.fingerprint)
    policy.missing_host_key(None, "[127.0.0.1]:22", key)  # type: ignore[arg-type]
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        policy.missing_host_key(None, "[127.0.0.1]:22", other)  # type: ignore[arg-type]


class _Agent:
    def __init__(self, keys: list[paramiko.PKey]) -> None:
        self.keys = keys

    def get_keys(self) -> list[paramiko.PKey]:
        return self.keys


def test_an_agent_reference_picks_the_agents_key_by_fingerprint() -> None:
    keys = [paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)]
    assert SshFleet.agent_key("agent:" + keys[1].fingerprint, _Agent(keys)) is keys[1]  # type: ignore[arg-type]
    with pytest.raises(FleetRefused, match="ssh-agent"):
        SshFleet.agent_key("agent:SHA256:" + "A" * 43, _Agent(keys))  # type: ignore[arg-type]


# --- the probe: a cycle that finishes while it is being read is finished, not killed ------------------------


def probe(tmp_path: Path, key: str) -> str:
    command = lc.probe_command(key).replace(lc.RUNS_DIR, str(tmp_path / "runs")).replace(
        lc.BOOT_ID, str(tmp_path / "boot_id"))
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_the_probe_reads_whether_the_cycle_lives_before_it_looks_for_the_report(tmp_path: Path) -> None:
    command = lc.probe_command("VA1-000001:package:2")
    assert command.index("kill -0") < command.index("report.json ]")  # the order that closes the race
    (tmp_path / "boot_id").write_text("b1\n")
    run = tmp_path / "runs" / "VA1-000001_package_2"
    run.mkdir(parents=True)
    (run / "started_at").write_text("2026-01-05T12:00:00Z\n")
    (run / "boot_id").write_text("b1\n")
    finished_long_ago = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    (run / "pid").write_text(finished_long_ago + "\n")
    answer = probe(tmp_path, "VA1-000001:package:2")
    assert answer.splitlines()[0] == "RUNNING" and answer.splitlines()[3] == "dead"  # no report: it was killed
    report = lc.parse_probe(answer, "VA1-000001:package:2", datetime.now(UTC))
    assert report is not None and report.result_code is ResultCode.ABORTED
    (run / "report.json").write_text('{"key": "VkExLTAwMDAwMTpwYWNrYWdlOjI=", "started_at": "2026-01-05T12:00:00Z", '
                                     '"result_code": 2, "updates": []}\n')
    answer = probe(tmp_path, "VA1-000001:package:2")
    report = lc.parse_probe(answer, "VA1-000001:package:2", datetime.now(UTC))
    assert report is not None and report.result_code is ResultCode.SUCCEEDED and report.updates == ()
    assert probe(tmp_path, "VA1-000009:package:1").strip() == "ABSENT"
