"""Patch selection per run (KB include/exclude, classifications, reboot policy, scan only), checked against
the simulated fleet's own record of what it installed and rebooted."""

from __future__ import annotations

import pytest

from orchestrator.service import ServiceError
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from tests import support
from workers.fleet import simulated


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = simulated.build_fleet_specs(21, 4, scenarios={simulated.Scenario.NORMAL: 4})
    fleet = simulated.SimulatedFleet.create(specs, simulated.MemoryStore(), simulated.SimTimings(
        reboot_seconds=5, package_seconds=5), seed=21, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher)
    support.register(container, specs)
    yield container, fleet, dispatcher, clock, specs
    container.close()


def _run(world, server: str, parameters: dict[str, object]):
    container, fleet, dispatcher, clock, specs = world
    [answer] = container.service.execute_package(
        "OSD", [server], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters), "t")
    assert answer.is_queued, answer
    support.drive(container, dispatcher, clock)
    return container.service.detail("OSD", server, answer.execution_id)


def test_scan_only_reports_and_changes_nothing(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    name = specs[0].name
    detail = _run(world, name, {"scanOnly": True})
    assert detail.status == "completed" and detail.patches
    assert all(p.status == "pending" for p in detail.patches)
    assert fleet.effects(name, "install") == [] and fleet.effects(name, "reboot") == []
    assert fleet.installed_kbs(name) == set()
    [summary] = container.service.history("OSD", name)
    assert summary.init_messages[0].init_end_message.startswith("Scan Complete: ")


def test_exclude_list_and_classifications_are_honoured(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    spec = specs[1]
    security = [u for u in spec.updates if str(u.classification) == "Security Updates"]
    excluded = security[0].kb
    detail = _run(world, spec.name, {"classifications": "Security Updates", "excludeKbs": [excluded]})
    installed = {e.kb for e in fleet.effects(spec.name, "install")}
    assert excluded not in installed
    classes = {str(u.classification) for u in spec.updates if u.kb in installed}
    assert classes <= {"Security Updates"}
    assert {p.kb for p in detail.patches} == installed


def test_include_list_installs_only_those(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    spec = specs[2]
    first_wave = min(u.wave for u in spec.updates)
    wanted = [u.kb for u in spec.updates if u.wave == first_wave][:2]
    detail = _run(world, spec.name, {"includeKbs": ",".join(wanted)})
    assert detail.status == "completed"
    assert {e.kb for e in fleet.effects(spec.name, "install")} == set(wanted)


def test_reboot_policy_never_reboots_nothing_and_says_a_reboot_is_pending(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    name = specs[3].name
    detail = _run(world, name, {"rebootPolicy": "never"})
    assert fleet.effects(name, "reboot") == []
    assert detail.status == "completed"
    assert "reboot is pending" in (detail.end_message or "")


def test_reboot_policy_always_reboots_once_more_at_the_end(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    name = specs[0].name
    detail = _run(world, name, {"rebootPolicy": "always"})
    reboots = fleet.effects(name, "reboot")
    assert detail.status == "completed"
    assert len(reboots) == detail.cycles  # one per cycle that needed it, plus the final one
    assert len({r.key for r in reboots}) == len(reboots)


def test_invalid_selection_is_refused_with_a_clear_message(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    with pytest.raises(ServiceError, match="excludeKbs"):
        container.service.execute_package(
            "OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={"excludeKbs": "12"}), "t")
