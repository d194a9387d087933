"""Patch selection per run (KB include/exclude, classifications, approval delay and severities, reboot policy,
scan only), checked against the simulated fleet's own record of what it installed and rebooted."""

from __future__ import annotations

import pytest

from orchestrator.services.errors import ServiceError
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(21, 4, scenarios={Scenario.NORMAL: 4})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
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


def _installs(fleet, name: str, execution_id: str) -> set[str]:
    """What the simulator installed on `name` for one execution (its effects record: keys are
    `<execution id>:package:<cycle>`)."""
    return {e.kb for e in fleet.effects(name, "install") if e.key.startswith(f"{execution_id}:")}


def test_approve_after_days_installs_the_old_enough_now_and_the_rest_once_the_delay_has_passed(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    spec = specs[2]
    young = {u.kb for u in spec.updates if u.age_days < 14}
    last_wave = max(u.wave for u in spec.updates)
    # the fleet's young updates are in its last wave: nothing they block is left out, so the sets are exact
    assert young and all(u.wave == last_wave for u in spec.updates if u.kb in young)
    first = _run(world, spec.name, {"approveAfterDays": 14})
    assert first.status == "completed"
    assert _installs(fleet, spec.name, first.execution_id) == {u.kb for u in spec.updates} - young
    assert {p.kb for p in first.patches} == {u.kb for u in spec.updates} - young
    # the older of the young ones come of age first: a run then installs them, and only them
    oldest_young = max(u.age_days for u in spec.updates if u.kb in young)
    clock.advance((14 - oldest_young) * 86400)
    second = _run(world, spec.name, {"approveAfterDays": 14})
    of_age = {u.kb for u in spec.updates if u.kb in young and u.age_days == oldest_young}
    assert of_age != young and _installs(fleet, spec.name, second.execution_id) == of_age
    clock.advance(14 * 86400)  # past the delay of every update
    third = _run(world, spec.name, {"approveAfterDays": 14})
    assert third.status == "completed"
    assert _installs(fleet, spec.name, third.execution_id) == young - of_age
    assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}


def test_severities_install_only_updates_of_those_severities(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    spec = specs[0]
    critical = {u.kb for u in spec.updates if u.msrc_severity == "Critical"}
    last_wave = max(u.wave for u in spec.updates)
    assert critical and all(u.wave == last_wave for u in spec.updates if u.kb in critical)
    detail = _run(world, spec.name, {"severities": "Important,Unspecified"})
    assert detail.status == "completed"
    installed = _installs(fleet, spec.name, detail.execution_id)
    assert installed == {u.kb for u in spec.updates} - critical
    assert {u.msrc_severity for u in spec.updates if u.kb in installed} == {"Important", ""}
    assert {p.kb for p in detail.patches} == installed


def test_an_included_kb_is_installed_before_the_approval_delay(world) -> None:
    container, fleet, dispatcher, clock, specs = world
    spec = specs[1]
    first_wave = [u for u in spec.updates if u.wave == min(u.wave for u in spec.updates)]
    wanted = {u.kb for u in first_wave if u.age_days < 365}  # the delay alone would hold them back
    assert len(wanted) >= 2
    detail = _run(world, spec.name, {"approveAfterDays": 365, "includeKbs": sorted(wanted)})
    assert detail.status == "completed" and _installs(fleet, spec.name, detail.execution_id) == wanted


@pytest.mark.parametrize("parameters,word", [
    ({"approveAfterDays": 400}, "approveAfterDays"),
    ({"severities": "Critical,Urgent"}, "severities"),
])
def test_invalid_baseline_rules_are_refused_with_a_clear_message(world, parameters, word) -> None:
    container, fleet, dispatcher, clock, specs = world
    with pytest.raises(ServiceError, match=word):
        container.service.execute_package(
            "OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters), "t")
