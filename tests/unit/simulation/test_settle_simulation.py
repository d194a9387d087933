"""The simulated fleet's and the CLC simulator's side of "settled" (issue 14): a CONFIGURING_UPDATES server
answers with a new boot id after its reboot but is still configuring updates for `configure_seconds`; the CLC
wire carries it in the `patchaas.servicing` extension; the ssh driver reads `systemctl is-system-running`."""

from __future__ import annotations

import pytest

from orchestrator.ports import FleetError, settled_by_status
from schemas.fleet import PowerState, ServerStatus, SettleStatus
from simulation import clc_answers
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.specs import Scenario, SimServerSpec, demo_fleet_specs
from simulation.store import MemoryStore
from workers.fleet import clc_wire, linux_checks


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def configuring_fleet(clock: Clock, scenario: Scenario = Scenario.CONFIGURING_UPDATES) -> SimulatedFleet:
    timings = SimTimings(reboot_seconds=10, configure_seconds=30)
    return SimulatedFleet.create([SimServerSpec("S01", scenario=scenario)], MemoryStore(), timings, 0, clock)


def test_a_configuring_server_answers_but_is_busy_until_it_is_done() -> None:
    clock = Clock()
    fleet = configuring_fleet(clock)
    assert fleet.settled("S01").idle  # before any reboot: nothing to configure
    fleet.reboot("S01", "e:reboot:1")
    clock.now += 5
    down = fleet.settled("S01")
    assert not down.up and not down.idle and down.detail == "not up"
    clock.now += 5  # back: new boot id, answering, still configuring
    status, busy = fleet.status("S01"), fleet.settled("S01")
    assert status.up and busy.up and busy.boot_id == status.boot_id and not busy.idle
    assert busy.detail.startswith("configuring updates: TrustedInstaller is busy")
    clock.now += 29
    assert not fleet.settled("S01").idle
    clock.now += 1
    assert fleet.settled("S01").idle
    fleet.reboot("S01", "e:reboot:2")  # every reboot configures again
    clock.now += 11
    assert not fleet.settled("S01").idle


def test_other_servers_are_idle_as_soon_as_they_are_up() -> None:
    clock = Clock()
    fleet = configuring_fleet(clock, Scenario.NORMAL)
    fleet.reboot("S01", "e:reboot:1")
    clock.now += 10
    assert fleet.settled("S01") == SettleStatus(up=True, boot_id=fleet.status("S01").boot_id, idle=True)


def test_the_demo_fleet_has_a_server_configuring_updates() -> None:
    assert [s for s in demo_fleet_specs() if s.scenario is Scenario.CONFIGURING_UPDATES]
    assert SimTimings.demo().configure_seconds > 0


def test_the_clc_simulator_answers_servicing_and_the_driver_reads_it() -> None:
    clock = Clock()
    fleet = configuring_fleet(clock)
    fleet.reboot("S01", "e:reboot:1")
    clock.now += 10
    body = clc_answers.server_json("OSD", fleet, "s01")
    assert body[clc_wire.EXTENSION][clc_wire.SERVICING]["idle"] is False
    read = clc_wire.settle_status("S01", body)
    assert read == fleet.settled("S01") and not read.idle


def test_a_control_plane_without_servicing_is_read_by_the_boot_id_only() -> None:
    body = {"name": "S01", "osType": "Windows 2012 R2", "details": {"powerState": "started",
                                                                   "inMaintenanceMode": True},
            clc_wire.EXTENSION: {"bootId": "b2", "up": True}}
    assert clc_wire.settle_status("S01", body) == SettleStatus(up=True, boot_id="b2", idle=True)
    body[clc_wire.EXTENSION][clc_wire.SERVICING] = "busy"
    with pytest.raises(FleetError, match="malformed"):
        clc_wire.settle_status("S01", body)


def test_a_driver_without_settled_is_read_from_its_status() -> None:
    status = ServerStatus(name="S01", os_type="x", power_state=PowerState.STARTED, in_maintenance=True, up=False,
                          boot_id="b2", pending_reboot=True)
    assert settled_by_status(status) == SettleStatus(up=False, boot_id="b2", idle=False, detail="not up")


@pytest.mark.parametrize(("state", "degraded", "idle"), [
    ("running", True, True), ("degraded", True, True), ("degraded", False, False), ("starting", True, False),
    ("initializing", True, False), ("stopping", True, False), ("offline", True, True), ("none", True, True),
    ("absent", False, True),
])
def test_systemd_states_are_read_as_settled_or_not(state: str, degraded: bool, idle: bool) -> None:
    read = linux_checks.parse_settle(f"0f1e2d\nsystemd:{state}\n", degraded)
    assert read.up and read.boot_id == "0f1e2d" and read.idle is idle
    assert state in read.detail or state in ("none", "absent")


def test_a_garbled_settle_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="unexpected settle answer"):
        linux_checks.parse_settle("0f1e2d\n", True)
    assert "systemctl is-system-running" in linux_checks.SETTLE_COMMAND


def test_a_service_down_server_answers_service_checks_from_its_state_once_per_key() -> None:
    from schemas import health

    clock = Clock()
    timings = SimTimings(reboot_seconds=10)
    fleet = SimulatedFleet.create([SimServerSpec("S01", scenario=Scenario.SERVICE_DOWN, updates=())], MemoryStore(),
                                  timings, 0, clock)
    command = health.service_command("W3SVC", "windows")
    assert fleet.run_command("S01", "e:health:baseline:0:iis:1", command, 10).ok
    assert fleet.check_service("S01", "k", "W3SVC", 10).ok
    fleet.reboot("S01", "e:reboot:1")  # a reboot without an install: the services start again
    clock.now += 10
    assert fleet.check_service("S01", "k", "W3SVC", 10).ok
    assert not fleet.run_command("S01", "e:other", "fail nope", 10).ok  # other commands: the hook language
