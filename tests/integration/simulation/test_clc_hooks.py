"""Command hooks through the `clc` driver and the CLC simulator on a real uvicorn on loopback: the hook script
package runs the command once per idempotency key, its result is read from `commandRuns`, a repeat under the
same key answers the first run, and a whole engine run with a failing pre hook stops before any change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator import bootstrap
from orchestrator.services import hooks as hook_service
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import clc_app, clc_control_plane, clc_server
from simulation import fleet as simulated
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from tests import support
from workers import mail
from workers.fleet import clc

USER = clc_control_plane.SimUser("ops", "s3cret", "OSD", "VA1")


@pytest.fixture
def served() -> Iterator[tuple[simulated.SimulatedFleet, clc.ClcFleet]]:
    specs = build_fleet_specs(8, 2, scenarios={Scenario.NORMAL: 2})
    fleet = simulated.SimulatedFleet.create(specs, timings=simulated.SimTimings.instant(), seed=8)
    with clc_server.running(clc_app.create_app(fleet, [USER])) as url:
        driver = clc.ClcFleet(clc.ClcConfig(url, USER.username, USER.password, poll_interval=0.01,
                                            backoff_initial=0.01, backoff_max=0.05))
        try:
            yield fleet, driver
        finally:
            driver.close()


def test_a_command_runs_once_per_key_through_the_script_package(
        served: tuple[simulated.SimulatedFleet, clc.ClcFleet]) -> None:
    fleet, driver = served
    server = fleet.specs()[0].name
    first = driver.run_command(server, "VA1-000001:hook:pre_cycle:1:smoke", "echo smoke ok; exit 3", 30)
    assert (first.exit_code, first.output, first.timed_out) == (3, "smoke ok", False)
    again = driver.run_command(server, "VA1-000001:hook:pre_cycle:1:smoke", "echo smoke ok; exit 3", 30)
    assert again == first
    assert len(fleet.effects(server, EffectKind.COMMAND)) == 1
    slow = driver.run_command(server, "VA1-000001:hook:pre_cycle:2:smoke", "sleep 90", 30)
    assert slow.timed_out and not slow.ok


def test_a_failing_pre_hook_on_a_clc_server_stops_the_run_before_any_change(
        pg: str, served: tuple[simulated.SimulatedFleet, clc.ClcFleet]) -> None:
    fleet, driver = served
    clock = support.FakeClock()
    dispatcher = support.ListDispatcher()
    container = bootstrap.build(support.test_settings(pg), dispatcher=dispatcher, fleet=driver,
                                mailer=mail.MemoryMailer(), clock=clock)
    support.register(container, fleet.specs())
    hook_service.HookService(container.sessions, clock, None).put("OSD", "drain", hook_service.parse_spec(
        {"kind": "command", "points": ["pre_maintenance"], "command": "echo draining; fail pool refused"}), "t")
    server = fleet.specs()[0].name
    [answer] = container.service.execute_package("OSD", [server], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    support.drive(container, dispatcher, clock)
    [row] = support.executions(container, [answer.execution_id or ""])
    assert row.state == "failed"
    assert row.failure_reason == "pre_maintenance hook drain failed: exit code 1: draining pool refused"
    assert fleet.effects(server, EffectKind.MAINTENANCE_ON) == [] and fleet.effects(server, EffectKind.INSTALL) == []
    assert len(fleet.effects(server, EffectKind.COMMAND)) == 1
    container.close()
