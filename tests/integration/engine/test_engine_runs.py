"""The whole engine on real PostgreSQL, steps driven synchronously with a fake clock and the simulated
fleet: every scenario ends where it should, with the right records, effects once each."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

EXPECTED = {
    Scenario.NORMAL: "completed",
    Scenario.FLAKY_KB: "completed",
    Scenario.PENDING_REBOOT: "completed",
    Scenario.UP_TO_DATE: "completed",
    Scenario.POWERED_OFF: "completed",
    Scenario.BROKEN_KB: "failed",
    Scenario.ROLLBACK_KB: "failed",
    Scenario.NEVER_RETURNS: "failed",
}


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(
        11, 10, scenarios={**{s: 1 for s in EXPECTED}, Scenario.NORMAL: 2, Scenario.UNSUPPORTED_OS: 1}
    )
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20, power_seconds=10), seed=11, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher, mailer)
    support.register(container, specs)
    yield container, fleet, dispatcher, clock, mailer, specs
    container.close()


def test_every_scenario_ends_in_its_expected_state(world) -> None:
    container, fleet, dispatcher, clock, mailer, specs = world
    answers = container.service.execute_package_on_groups(
        "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test"
    )
    by_server = {a.server: a for a in answers}
    support.drive(container, dispatcher, clock)
    for spec in specs:
        answer = by_server[spec.name]
        if spec.scenario is Scenario.UNSUPPORTED_OS:
            assert not answer.is_queued and "does not support" in (answer.error_message or "")
            continue
        detail = container.service.detail("OSD", spec.name, answer.execution_id)
        assert detail.status == EXPECTED[spec.scenario], (spec.scenario, detail)
        status = fleet.status(spec.name)
        assert not status.in_maintenance, spec
        assert status.power_state is spec.power_state, spec
        effects = fleet.effects(spec.name)
        kinds = [e.kind for e in effects]
        assert kinds.count("maintenance_on") == 1 and kinds.count("maintenance_off") == 1, (spec.scenario, kinds)
        installs = [(e.key, e.kb) for e in effects if e.kind == "install"]
        assert len(installs) == len(set(installs)), "a KB was installed twice in one cycle"
        reboots = [e.key for e in effects if e.kind == "reboot"]
        assert len(reboots) == len(set(reboots))
        if spec.scenario is Scenario.NEVER_RETURNS:
            assert "did not come back" in (detail.failure_reason or "")
        if spec.scenario in (Scenario.BROKEN_KB, Scenario.ROLLBACK_KB):
            assert detail.quarantined, detail
        if detail.status == "completed":
            assert detail.end_message == "Updating Complete"
            assert fleet.installed_kbs(spec.name) >= {p.kb for p in detail.patches if p.status == "completed"}
    sent = [(m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mailer.sent]
    assert len(sent) == len(set(sent)) == 2 * sum(a.is_queued for a in answers)


def test_records_match_the_original_messages(world) -> None:
    container, fleet, dispatcher, clock, mailer, specs = world
    normal = next(s for s in specs if s.scenario is Scenario.NORMAL)
    [answer] = container.service.execute_package("OSD", [normal.name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "test")
    support.drive(container, dispatcher, clock)
    [summary] = container.service.history("OSD", normal.name)
    assert summary.status == "completed"
    inits = summary.init_messages
    assert len(inits) >= 2
    assert all(i.init_begin_message == "Invoking SUS API" for i in inits)
    assert inits[-1].init_end_message == "Update Process Complete. There are 0 updates to install"
    assert inits[0].init_end_message.startswith("Updates Downloaded Successfully downloaded ")
    detail = container.service.detail("OSD", normal.name, answer.execution_id)
    assert detail.begin_message == "Update Process BEGIN"
    assert all(p.patch_begin_message == f"Installing {p.title}" for p in detail.patches)
    assert all(p.patch_end_message == "Result Code: 2" for p in detail.patches if p.status == "completed")
    with container.sessions() as session:
        cycles = session.scalars(sa.select(models.Initiation.cycle).where(
            models.Initiation.execution_id == answer.execution_id)).all()
    assert sorted(cycles) == list(range(1, len(cycles) + 1))
