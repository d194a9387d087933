"""The Windows behaviours of issue 12 through the whole engine on real PostgreSQL (steps driven synchronously,
a fake clock, the simulated fleet): a reboot pending that the control plane does not report, an exclusive
update, a partial search, a busy installer, a package run that dies, a cycle longer than the package timeout
with heartbeats. Each ends in its terminal state, with the records and the simulator's effects that say why."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa

from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.package_run import DIED
from simulation.specs import WINDOWS_BEHAVIOURS, Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

FAST = dict(heartbeat_seconds=60, heartbeat_grace_seconds=180.0, busy_backoff_seconds=30.0,  # package timeout 600 s
            poll_interval_seconds=10.0)


def world_of(pg: str, scenarios: dict[Scenario, int], **settings: object):  # type: ignore[no-untyped-def]
    clock = support.FakeClock()
    specs = build_fleet_specs(12, sum(scenarios.values()), scenarios=scenarios)
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20, power_seconds=10), seed=12, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg, **{**FAST, **settings}), fleet, clock, dispatcher,
                                       mail.MemoryMailer())
    support.register(container, specs)
    return container, fleet, dispatcher, clock, specs


def run_all(world, parameters: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    container, fleet, dispatcher, clock, specs = world
    answers = container.service.execute_package_on_groups(
        "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters or {}), "test")
    assert all(a.is_queued for a in answers), answers
    support.drive(container, dispatcher, clock, max_rounds=20_000, step_seconds=10.0)
    ids = {a.server: a.execution_id for a in answers}
    return {spec.scenario: (spec, container.service.detail("OSD", spec.name, ids[spec.name])) for spec in specs}


def end_messages(container, execution_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with container.sessions() as session:
        return list(session.scalars(sa.select(models.Initiation.end_message).where(
            models.Initiation.execution_id == execution_id).order_by(models.Initiation.cycle)))


def test_every_windows_behaviour_ends_completed_and_fully_patched(pg: str) -> None:
    world = world_of(pg, {**{s: 1 for s in WINDOWS_BEHAVIOURS}, Scenario.NORMAL: 1})
    container, fleet, _, _, _ = world
    try:
        outcomes = run_all(world)
        for scenario, (spec, detail) in outcomes.items():
            assert detail.status == "completed", (scenario, detail.failure_reason)
            assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}, scenario
            assert fleet.offered_kbs(spec.name) == [], scenario
            kinds = Counter(e.kind for e in fleet.effects(spec.name))
            assert kinds["maintenance_on"] == kinds["maintenance_off"] == 1, (scenario, kinds)
            installs = [(e.key, e.kb) for e in fleet.effects(spec.name, "install")]
            assert len(installs) == len(set(installs)), scenario
            reboots = [e.key for e in fleet.effects(spec.name, "reboot")]
            assert len(reboots) == len(set(reboots)), scenario
            assert not detail.quarantined, scenario
        normal_reboots = len(fleet.effects(outcomes[Scenario.NORMAL][0].name, "reboot"))
        messages = {s: end_messages(container, d.execution_id) for s, (_, d) in outcomes.items()}
        pending_spec, _ = outcomes[Scenario.REBOOT_PENDING_INSTALL]
        assert messages[Scenario.REBOOT_PENDING_INSTALL][0].startswith("Update Install Blocked: a reboot is pending")
        assert len(fleet.effects(pending_spec.name, "reboot")) >= normal_reboots  # one more than its waves need
        exclusive_spec, exclusive = outcomes[Scenario.EXCLUSIVE_UPDATE]
        first_cycle = [p.kb for p in exclusive.patches if p.cycle == 1]
        assert len(first_cycle) == 1 and exclusive_spec.update(first_cycle[0]).classification.value == \
            "Servicing Stack Updates"
        assert messages[Scenario.PARTIAL_SEARCH][0].startswith("Update Cycle Failed: the update search failed")
        assert "the search was partial" in messages[Scenario.PARTIAL_SEARCH][1]
        busy = messages[Scenario.INSTALLER_BUSY]
        assert "(installer_busy)" in busy[0] and "(another_run)" in busy[1]
        assert messages[Scenario.PACKAGE_DIES][0] == f"Update Cycle Failed: {DIED}"
        _, long_run = outcomes[Scenario.LONG_CYCLE]
        first = next(p for p in long_run.patches if p.cycle == 1)
        assert first.status == "completed"
        with container.sessions() as session:
            init = session.scalars(sa.select(models.Initiation).where(
                models.Initiation.execution_id == long_run.execution_id, models.Initiation.cycle == 1)).one()
        assert (init.ended_at - init.started_at).total_seconds() > 600  # outlived the package timeout: heartbeats
    finally:
        container.close()


def test_without_heartbeats_the_long_cycle_fails_at_the_package_timeout(pg: str) -> None:
    world = world_of(pg, {Scenario.LONG_CYCLE: 1}, heartbeat_seconds=0)
    container, fleet, _, _, _ = world
    try:
        [(spec, detail)] = run_all(world).values()
        assert detail.status == "failed"
        assert detail.failure_reason == "the update package did not finish cycle 1 within 10m 0s"
        assert not fleet.status(spec.name).in_maintenance
    finally:
        container.close()


def test_a_busy_installer_past_its_retries_and_a_pending_reboot_under_policy_never_fail_clearly(pg: str) -> None:
    world = world_of(pg, {Scenario.INSTALLER_BUSY: 1, Scenario.REBOOT_PENDING_INSTALL: 1}, busy_retries=1)
    container, fleet, _, _, _ = world
    try:
        outcomes = run_all(world, {"rebootPolicy": "never"})
        busy_spec, busy = outcomes[Scenario.INSTALLER_BUSY]
        assert busy.status == "failed" and "in 2 cycles of this run" in (busy.failure_reason or "")
        pending_spec, pending = outcomes[Scenario.REBOOT_PENDING_INSTALL]
        assert pending.status == "failed" and "the reboot policy is never" in (pending.failure_reason or "")
        for spec in (busy_spec, pending_spec):
            assert fleet.effects(spec.name, "install") == [] and fleet.effects(spec.name, "reboot") == []
            assert not fleet.status(spec.name).in_maintenance
    finally:
        container.close()


@pytest.mark.parametrize("parameters", [{"packageExclusions": ["kernel*"]}, {"packageExclusions": "kernel*"}])
def test_a_field_the_windows_package_refuses_is_refused_at_request_time(pg: str, parameters) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.services.errors import ServiceError

    world = world_of(pg, {Scenario.NORMAL: 1})
    container, fleet, dispatcher, _, specs = world
    try:
        refused = "packageExclusions is not supported by the Windows Update Scripts"
        with pytest.raises(ServiceError, match=refused) as no:
            container.service.execute_package("OSD", [specs[0].name],
                                              PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters), "t")
        assert no.value.status == 400 and not dispatcher.steps and fleet.effects() == []
    finally:
        container.close()
