"""The Linux update package and the ssh driver's pure parts: the commands it sends, the sh script's parsers
(run under the machine's /bin/sh on recorded package-manager output), the report it reads back, and how
Linux packages go through the state machine, the packages catalogue and the routing fleet."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import messages, packages
from orchestrator.domain.machine import CycleReported, ExecutionView, Policy, State, decide
from orchestrator.ports import FleetRefused
from schemas.fleet import CycleReport, CycleState, PackageUpdate, ResultCode, UpdateResult
from workers.fleet import linux_cycle as lc
from workers.fleet.routing import RoutingFleet
from workers.fleet.ssh import SshConfig, SshFleet

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
SH = shutil.which("sh") or "/bin/sh"


def run_lib(function: str, stdin: str) -> list[str]:
    """Run one of the cycle script's parsing functions on `stdin` (the script sourced in library mode)."""
    done = subprocess.run(
        [SH, "-c", '. "$0"; ' + function, SCRIPT_PATH],
        input=stdin, capture_output=True, text=True, env={"PATCHAAS_LIB_ONLY": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return done.stdout.splitlines()


SCRIPT_PATH = ""


@pytest.fixture(autouse=True, scope="module")
def _script_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    global SCRIPT_PATH
    path = tmp_path_factory.mktemp("cycle") / "cycle.sh"
    path.write_text(lc.CYCLE_SCRIPT)
    SCRIPT_PATH = str(path)


# --- the script -------------------------------------------------------------------------------


def test_the_cycle_script_is_valid_posix_sh() -> None:
    assert subprocess.run([SH, "-n", SCRIPT_PATH], capture_output=True).returncode == 0


def test_apt_list_upgradable_is_parsed_to_name_from_to() -> None:
    listing = (
        "Listing...\n"
        "pt-hello/unknown 1.1 all [upgradable from: 1.0]\n"
        "openssl/stable-security 3.0.15-1~deb12u1 amd64 [upgradable from: 3.0.13-1~deb12u1]\n"
        "libc6/stable 2.36-9+deb12u9 amd64 [upgradable from: 2.36-9+deb12u7]\n"
        "N: There is 1 additional version. Please use the '-a' switch to see it\n"
    )
    assert run_lib("apt_upgradable", listing) == [
        "pt-hello 1.0 1.1",
        "openssl 3.0.13-1~deb12u1 3.0.15-1~deb12u1",
        "libc6 2.36-9+deb12u7 2.36-9+deb12u9",
    ]


def fetch_failed(log: str, tmp_path) -> bool:
    path = tmp_path / "refresh.log"
    path.write_text(log)
    done = subprocess.run([SH, "-c", '. "$0"; apt_fetch_failed "$1"', SCRIPT_PATH, str(path)],
                          env={"PATCHAAS_LIB_ONLY": "1", "PATH": "/usr/bin:/bin"})
    return done.returncode == 0


def test_an_apt_refresh_that_could_not_fetch_is_a_failure_although_apt_get_exits_0(tmp_path) -> None:
    ok = "Get:1 http://127.0.0.1:8080 ./ Release [1,111 B]\nGet:2 http://127.0.0.1:8080 ./ Packages [712 B]\n" \
         "Fetched 1,823 B in 0s (91.2 kB/s)\nReading package lists...\n"
    assert not fetch_failed(ok, tmp_path)
    assert fetch_failed("Err:1 http://127.0.0.1:8080 ./ Release\n  Could not connect to 127.0.0.1:8080 (127.0.0.1)"
                        "\nReading package lists...\nW: Failed to fetch http://127.0.0.1:8080/./Release  Could not "
                        "connect\nW: Some index files failed to download. They have been ignored, or old ones "
                        "used instead.\n", tmp_path)
    assert fetch_failed("Reading package lists...\nE: Could not get lock /var/lib/apt/lists/lock\n", tmp_path)
    # a warning that is not about fetching (e.g. a duplicated source) does not fail the refresh
    assert not fetch_failed("W: Target Packages (Packages) is configured multiple times in "
                            "/etc/apt/sources.list:1 and /etc/apt/sources.list.d/x.list:1\n", tmp_path)


def test_the_apt_refresh_is_retried_then_reported_failed(tmp_path) -> None:
    """A fake apt-get that cannot fetch the first time, then can: the cycle's refresh succeeds on its second
    try; one that never can fails the refresh after PATCHAAS_REFRESH_TRIES tries (exit 100)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text('#!/bin/sh\nn=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$COUNT"\n'
                    'if [ "$n" -lt "$FAIL_TIMES" ]; then echo "W: Failed to fetch http://x/Release"; fi\nexit 0\n')
    fake.chmod(0o755)
    for fail_times, expected_rc, expected_calls in ((1, 0, 2), (9, 100, 2)):
        count = tmp_path / f"count{fail_times}"
        done = subprocess.run(
            [SH, "-c", '. "$0"; cd "$1" && APT=apt-get; apt_refresh; echo "rc=$?"', SCRIPT_PATH, str(tmp_path)],
            capture_output=True, text=True, env={"PATCHAAS_LIB_ONLY": "1", "PATH": f"{bin_dir}:/usr/bin:/bin",
                                                 "COUNT": str(count), "FAIL_TIMES": str(fail_times),
                                                 "PATCHAAS_REFRESH_TRIES": "2",
                                                 "PATCHAAS_REFRESH_BACKOFF": "0"},
        )
        assert done.stdout.strip() == f"rc={expected_rc}", done.stderr
        assert int(count.read_text()) == expected_calls


def test_packages_dpkg_left_half_configured_are_retried() -> None:
    status = "ii |pt-hello|1.1\niF |pt-fails|1.1\niU |pt-unpacked|2.0\nrc |gone|1.0\nhi |held|3.0\n"
    assert run_lib("apt_broken", status) == ["pt-fails 1.1 1.1", "pt-unpacked 2.0 2.0"]


def test_dnf_check_update_is_parsed_to_name_and_version() -> None:
    listing = (
        "\n"
        "bash.x86_64                     5.1.8-9.el9                    baseos\n"
        "nss.x86_64                      3.101.0-7.el9_2                appstream\n"
        "python3-libs.x86_64             3.9.18-3.el9_4.6               baseos\n"
        "kernel.x86_64                   1:5.14.0-427.el9               baseos\n"
        "Obsoleting Packages\n"
        "grub2-tools.x86_64              1:2.06-80.el9                  baseos\n"
    )
    assert run_lib("dnf_upgradable", listing) == [
        "bash 5.1.8-9.el9",
        "nss 3.101.0-7.el9_2",
        "python3-libs 3.9.18-3.el9_4.6",
        "kernel 1:5.14.0-427.el9",
    ]


def test_exclusion_globs_match_by_name_and_never_expand_against_files(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "kernel-file-here").touch()  # `kernel*` must stay a pattern, not become this file's name
    monkeypatch.chdir(tmp_path)
    script = 'EXCLUDES="kernel* nss*"; for p in kernel-core nss-util bash; do excluded $p && echo $p; done; true'
    assert run_lib(script, "") == ["kernel-core", "nss-util"]


# --- commands ---------------------------------------------------------------------------------


def test_each_key_has_its_own_run_directory_with_a_safe_name() -> None:
    assert lc.run_dir("VA1-123456:package:3") == "/var/lib/patchaas/runs/VA1-123456_package_3"
    assert lc.run_dir("x/../../etc;rm -rf /") == "/var/lib/patchaas/runs/x_.._.._etc_rm_-rf__"
    with pytest.raises(ValueError):
        lc.run_dir("..")


def test_the_invoke_command_is_idempotent_and_detached() -> None:
    command = lc.invoke_command("apt", "VA1-123456:package:1", ("pt-excluded", "kernel*"))
    assert "if ! mkdir /var/lib/patchaas/runs/VA1-123456_package_1" in command and "echo EXISTS" in command
    assert "nohup setsid sh ./cycle.sh apt /var/lib/patchaas/runs/VA1-123456_package_1" in command
    assert "'kernel*'" in command  # quoted: no glob expansion on the host's shell
    assert "< /dev/null &" in command and command.endswith("echo STARTED")
    with pytest.raises(ValueError):
        lc.invoke_command("zypper", "k", ())


def test_the_yum_defaults_exclude_kernel_and_nss_and_unsafe_globs_are_refused() -> None:
    assert lc.exclusions("dnf", ("pt-fails",), lc.DEFAULT_YUM_EXCLUDES) == ("kernel*", "nss*", "pt-fails")
    assert lc.exclusions("apt", (), ()) == ()
    with pytest.raises(ValueError):
        lc.exclusions("apt", ("a; rm -rf /",), ())


def test_a_non_root_user_goes_through_sudo_without_a_prompt() -> None:
    assert lc.as_root("cat /x", "root") == "cat /x"
    assert lc.as_root("cat /x", "patchaas") == "sudo -n sh -c 'cat /x'"


def test_reboot_is_detached_and_happens_once_per_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    command = lc.reboot_command("systemctl reboot", "VA1-123456:reboot:1")
    assert "nohup sh -c 'sleep 1; systemctl reboot' > /dev/null 2>&1 < /dev/null &" in command
    # run it for real, with the reboot replaced by a counter and the marker directory moved into tmp_path
    counted = command.replace("systemctl reboot", f"echo x >> {tmp_path}/reboots").replace(
        lc.REBOOTS_DIR, str(tmp_path / "markers"))
    answers = [subprocess.run([SH, "-c", counted], capture_output=True, text=True).stdout.strip() for _ in range(2)]
    assert answers == ["REBOOTING", "DONE"]
    time.sleep(1.5)
    assert (tmp_path / "reboots").read_text() == "x\n"


def test_status_reads_the_boot_id_and_the_distribution_reboot_signal() -> None:
    assert "/var/run/reboot-required" in lc.status_command("apt")
    assert "needs-restarting -r" in lc.status_command("dnf")
    assert lc.parse_status("5e0c3a9e-1b2c-4d5e-8f90-123456789abc\npending\n") == (
        "5e0c3a9e-1b2c-4d5e-8f90-123456789abc", True)
    with pytest.raises(lc.ProbeError):
        lc.parse_status("garbage")


# --- reading the host's answer ------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def report_json(key: str = "VA1-123456:package:1") -> str:
    return json.dumps({
        "key": b64(key), "package_manager": "apt", "started_at": "2026-01-05T11:59:00Z",
        "finished_at": "2026-01-05T11:59:40Z", "result_code": 2, "refresh_rc": 0, "refresh_output": b64("ok"),
        "reboot_required": True, "reboot_packages": b64("pt-reboot\n"), "excluded": b64("pt-excluded\n"),
        "updates": [
            {"package": "pt-hello", "from": "1.0", "to": "1.1", "rc": 0, "ok": 1, "now": "1.1", "output": ""},
            {"package": "pt-reboot", "from": "1.0", "to": "1.1", "rc": 0, "ok": 1, "now": "1.1", "output": ""},
            {"package": "pt-fails", "from": "1.0", "to": "1.1", "rc": 100, "ok": 0, "now": "1.1",
             "output": b64("Setting up pt-fails (1.1) ...\r\ndpkg: error processing package pt-fails\r\n")},
        ],
    })


def test_a_finished_report_becomes_one_package_update_per_package() -> None:
    key = "VA1-123456:package:1"
    report = lc.parse_probe("FINISHED\n" + report_json(key), key, NOW)
    assert report is not None and report.state is CycleState.FINISHED and report.reboot_required
    assert report.excluded == ("pt-excluded",)
    hello, reboot, fails = report.updates
    assert isinstance(hello, PackageUpdate) and hello.ident == "pt-hello" and hello.kb is None
    assert (hello.from_version, hello.to_version, hello.result_code) == ("1.0", "1.1", ResultCode.SUCCEEDED)
    assert hello.title == "pt-hello 1.0 → 1.1" and not hello.reboot_required and reboot.reboot_required
    assert fails.result_code is ResultCode.FAILED and fails.hresult == 100
    assert fails.output == "Setting up pt-fails (1.1) ...\ndpkg: error processing package pt-fails"


def test_a_report_for_another_key_is_not_taken() -> None:
    with pytest.raises(lc.ProbeError):
        lc.parse_probe("FINISHED\n" + report_json("VA1-999999:package:1"), "VA1-123456:package:1", NOW)
    with pytest.raises(lc.ProbeError):
        lc.parse_probe("FINISHED\n{not json", "k", NOW)


def test_a_cycle_the_host_never_received_is_none() -> None:
    assert lc.parse_probe("ABSENT\n", "k", NOW) is None


def test_a_running_cycle_is_running_while_its_process_lives_in_the_same_boot() -> None:
    running = lc.parse_probe("RUNNING\n2026-01-05T11:59:00Z\nboot-a\nalive\nboot-a\n", "k", NOW)
    assert running is not None and running.state is CycleState.RUNNING
    assert running.started_at == NOW - timedelta(minutes=1)


@pytest.mark.parametrize("answer", ["RUNNING\n2026-01-05T11:59:00Z\nboot-a\ndead\nboot-a\n",
                                    "RUNNING\n2026-01-05T11:59:00Z\nboot-a\nalive\nboot-b\n"])
def test_a_cycle_killed_or_rebooted_under_is_aborted_not_waited_for(answer: str) -> None:
    report = lc.parse_probe(answer, "k", NOW)
    assert report is not None and report.state is CycleState.FINISHED
    assert report.result_code is ResultCode.ABORTED and not report.updates


# --- through the state machine ------------------------------------------------------------------


def linux_cycle(*updates: UpdateResult, reboot: bool = False) -> CycleReport:
    return CycleReport(key="VA1-123456:package:1", state=CycleState.FINISHED, started_at=NOW, finished_at=NOW,
                       updates=updates, reboot_required=reboot)


def pkg(name: str, ok: bool = True) -> PackageUpdate:
    return PackageUpdate(package=name, title=f"{name} 1.0 → 1.1", from_version="1.0", to_version="1.1",
                         result_code=ResultCode.SUCCEEDED if ok else ResultCode.FAILED,
                         hresult=0 if ok else 100, output="" if ok else "dpkg: error processing package")


def awaiting(package_id: str = packages.APT_UPDATE, **kw: object) -> ExecutionView:
    return ExecutionView(id="VA1-123456", server="VA1OSDDEB01", state=State.AWAITING_RESULT, version=3, cycle=1,
                         package_id=package_id, deadline_at=NOW + timedelta(hours=1), **kw)  # type: ignore[arg-type]


def test_linux_packages_are_recorded_by_name_with_versions_and_the_failures_output() -> None:
    decision = decide(awaiting(), CycleReported(linux_cycle(pkg("pt-hello"), pkg("pt-fails", ok=False))), NOW,
                      Policy())
    assert decision.initiation is not None
    assert decision.initiation.begin_message == "Invoking apt-get update"
    hello, fails = decision.initiation.patches
    assert (hello.kb, hello.status, hello.from_version, hello.to_version, hello.output) == (
        "pt-hello", "completed", "1.0", "1.1", None)
    assert hello.begin_message == "Installing pt-hello 1.0 → 1.1" and hello.end_message == "Result Code: 2"
    assert (fails.kb, fails.status, fails.output) == ("pt-fails", "failed", "dpkg: error processing package")
    assert decision.view.installed_kbs == frozenset({"pt-hello"}) and decision.view.kb_failures == {"pt-fails": 1}
    assert decision.view.state is State.INVOKING_PACKAGE and decision.view.cycle == 2


def test_a_package_failing_twice_is_quarantined_by_name() -> None:
    view = awaiting(kb_failures={"pt-fails": 1})
    decision = decide(view, CycleReported(linux_cycle(pkg("pt-fails", ok=False))), NOW, Policy())
    assert "pt-fails" in decision.view.quarantined


@pytest.mark.parametrize(("package_id", "begin"), [
    (packages.YUM_UPDATE, "Invoking yum check-update"),
    (packages.YUM_UPDATE_2016, "Invoking yum check-update"),
    (packages.APT_UPDATE, "Invoking apt-get update"),
    ("94bd395f-9b54-4693-94ae-4f3aa93fc239", "Invoking SUS API"),
])
def test_each_package_begins_its_cycles_with_the_originals_words(package_id: str, begin: str) -> None:
    assert messages.init_begin(package_id) == begin
    decision = decide(awaiting(package_id), CycleReported(linux_cycle()), NOW, Policy())
    assert decision.initiation is not None and decision.initiation.begin_message == begin


def test_the_linux_packages_support_their_families_only() -> None:
    assert packages.get(packages.YUM_UPDATE).supports("CentOS 6 64-bit")
    assert packages.get(packages.YUM_UPDATE_2016).supports("RedHat Enterprise Linux 7 64-bit")
    assert not packages.get(packages.YUM_UPDATE).supports("Debian 12 64-bit")
    assert packages.get(packages.APT_UPDATE).supports("Ubuntu 22 64-bit")
    assert not packages.get(packages.APT_UPDATE).supports("Windows 2012R2 Datacenter 64-bit")
    assert packages.os_family("Windows 2012 Datacenter 64-bit") == "windows"
    assert packages.os_family("Debian 12 64-bit") == packages.os_family("CentOS 7 64-bit") == "linux"


def test_a_windows_update_result_still_needs_a_kb() -> None:
    with pytest.raises(ValueError):
        UpdateResult(title="t", result_code=ResultCode.SUCCEEDED)  # type: ignore[call-arg]
    assert UpdateResult(kb="KB3045685", title="t", result_code=ResultCode.SUCCEEDED).ident == "KB3045685"


# --- the driver's pure parts ---------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str) -> None:
        self.name, self.calls = name, []

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        return lambda *args: self.calls.append((method, args))


def test_the_routing_fleet_sends_each_server_to_its_os_familys_driver() -> None:
    windows, linux = Recorder("windows"), Recorder("linux")
    os_types = {"VA1OSDWIN01": "Windows 2012R2 Datacenter 64-bit", "VA1OSDDEB01": "Debian 12 64-bit",
                "VA1OSDODD01": "Plan 9"}
    fleet = RoutingFleet(windows, linux, os_types.get)  # type: ignore[arg-type]
    fleet.reboot("VA1OSDWIN01", "k1")
    fleet.set_maintenance("VA1OSDDEB01", True, "k2")
    assert windows.calls == [("reboot", ("VA1OSDWIN01", "k1"))]
    assert linux.calls == [("set_maintenance", ("VA1OSDDEB01", True, "k2"))]
    with pytest.raises(FleetRefused):
        fleet.status("VA1OSDODD01")
    with pytest.raises(FleetRefused):
        fleet.status("VA1OSDNOPE01")


def test_the_driver_refuses_to_run_without_pinned_host_keys() -> None:
    with pytest.raises(ValueError, match="KNOWN_HOSTS"):
        SshFleet(sessions=None, config=SshConfig())  # type: ignore[arg-type]


def test_key_references_resolve_inside_the_key_directory_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet = SshFleet(sessions=None, config=SshConfig(known_hosts="/dev/null", key_dir=str(tmp_path)))  # type: ignore[arg-type]
    assert fleet.key_path("deb.key") == str(tmp_path.resolve() / "deb.key")
    assert fleet.key_path("/etc/patchaas/keys/a") == "/etc/patchaas/keys/a"
    with pytest.raises(FleetRefused):
        fleet.key_path("../../etc/shadow")
    with pytest.raises(FleetRefused):
        SshFleet(sessions=None, config=SshConfig(known_hosts="/dev/null")).key_path("rel")  # type: ignore[arg-type]
