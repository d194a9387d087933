"""Settled after every reboot (issue 14 part 1), on real PostgreSQL with the simulated fleet and a fake clock: a
server that answers after its reboot but is still configuring updates is waited out (no cycle starts while it
configures), the wait is in the run's history, and the reboot timeout bounds it."""

from __future__ import annotations

import re

import sqlalchemy as sa

from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support

REBOOT, CONFIGURE, SETTLE = 30.0, 90.0, 20.0


def run(pg: str, **overrides: object) -> tuple[support.Container, simulated.SimulatedFleet, str, str]:
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 1, scenarios={Scenario.CONFIGURING_UPDATES: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=REBOOT, package_seconds=5, configure_seconds=CONFIGURE), seed=3, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, settle_seconds=SETTLE, **overrides)
    container = support.make_container(settings, fleet, clock, dispatcher)
    support.register(container, specs)
    answer, = container.service.execute_package_on_groups(
        "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test")
    support.drive(container, dispatcher, clock)
    return container, fleet, specs[0].name, answer.execution_id


def history(container: support.Container, execution_id: str) -> list[tuple[str, str, str]]:
    with container.sessions() as session:
        rows = session.execute(sa.select(models.ExecutionEvent.from_state, models.ExecutionEvent.to_state,
                                         models.ExecutionEvent.note)
                               .where(models.ExecutionEvent.execution_id == execution_id)
                               .order_by(models.ExecutionEvent.id)).all()
    return [tuple(r) for r in rows]


def test_a_server_still_configuring_updates_is_waited_out(pg: str) -> None:
    container, fleet, server, execution_id = run(pg, reboot_timeout_seconds=300.0)
    try:
        detail = container.service.detail("OSD", server, execution_id)
        assert detail.status == "completed", detail
        reboots = fleet.effects(server, EffectKind.REBOOT)
        installs = fleet.effects(server, EffectKind.INSTALL)
        assert reboots and len({e.key for e in reboots}) == len(reboots)
        for reboot in reboots:  # nothing installs while the server configures, nor before it settled
            ready = reboot.at + REBOOT + CONFIGURE + SETTLE
            assert not [i for i in installs if reboot.at < i.at < ready], (reboot, installs)
        notes = history(container, execution_id)
        settling = [n for n in notes if n[1] == "settling"]
        assert any(n[0] == "awaiting_boot" and "waiting for the servicing stack to settle" in n[2] for n in settling)
        assert any(n[0] == "settling" and "configuring updates: TrustedInstaller is busy" in n[2] for n in settling)
        assert any(n[0] == "settling" and "idle since" in n[2] for n in settling)
        assert any(n[0] == "settling" and n[1] == "invoking_package"
                   and re.search(r"settled: servicing stack idle for 0m 2\ds", n[2]) for n in notes)
    finally:
        container.close()


def test_the_reboot_timeout_bounds_the_settle_wait(pg: str) -> None:
    container, fleet, server, execution_id = run(pg, reboot_timeout_seconds=REBOOT + CONFIGURE - 10)
    try:
        detail = container.service.detail("OSD", server, execution_id)
        assert detail.status == "failed"
        with container.sessions() as session:
            reason = session.get(models.Execution, execution_id).failure_reason
        assert "came back after the reboot of cycle 1 but did not settle within" in reason
        assert "configuring updates" in reason
        assert not fleet.status(server).in_maintenance  # cleanup ran
    finally:
        container.close()
