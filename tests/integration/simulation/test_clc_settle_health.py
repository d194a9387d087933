"""Issue 14 parts 1 and 2 through the `clc` driver and the CLC simulator on a real uvicorn on loopback: `settled`
reads the simulator's `patchaas.servicing` (busy while a server configures updates after its reboot), and a
`service` health check's PowerShell runs through the hook script package and is answered from the server's state."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from schemas import health
from simulation import clc_app, clc_control_plane, clc_server
from simulation import fleet as simulated
from simulation.specs import Scenario, SimServerSpec
from workers.fleet import clc

USER = clc_control_plane.SimUser("ops", "s3cret", "OSD", "VA1")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[simulated.SimulatedFleet, clc.ClcFleet, Clock]]:
    clock = Clock()
    specs = [SimServerSpec("VA1OSDPATCH01", scenario=Scenario.CONFIGURING_UPDATES),
             SimServerSpec("VA1OSDPATCH02", scenario=Scenario.SERVICE_DOWN)]
    fleet = simulated.SimulatedFleet.create(specs, timings=simulated.SimTimings(reboot_seconds=5, configure_seconds=30),
                                            seed=8, clock=clock)
    with clc_server.running(clc_app.create_app(fleet, [USER])) as url:
        driver = clc.ClcFleet(clc.ClcConfig(url, USER.username, USER.password, poll_interval=0.01,
                                            backoff_initial=0.01, backoff_max=0.05))
        try:
            yield fleet, driver, clock
        finally:
            driver.close()


def test_the_driver_sees_a_server_configuring_updates_until_it_is_done(
        served: tuple[simulated.SimulatedFleet, clc.ClcFleet, Clock]) -> None:
    fleet, driver, clock = served
    assert driver.settled("VA1OSDPATCH01").idle
    fleet.reboot("VA1OSDPATCH01", "e:reboot:1")
    clock.now += 5
    busy = driver.settled("VA1OSDPATCH01")
    assert busy.up and not busy.idle and busy.detail.startswith("configuring updates")
    assert busy.boot_id == driver.status("VA1OSDPATCH01").boot_id == "VA1OSDPATCH01-boot-2"
    clock.now += 30
    assert driver.settled("VA1OSDPATCH01").idle


def test_a_service_check_runs_through_the_script_package(
        served: tuple[simulated.SimulatedFleet, clc.ClcFleet, Clock]) -> None:
    _fleet, driver, _clock = served
    command = health.service_command("W3SVC", "windows")
    result = driver.run_command("VA1OSDPATCH02", "e:health:baseline:0:iis:1", command, 5)
    assert result.ok and result.output == "service W3SVC is Running"
