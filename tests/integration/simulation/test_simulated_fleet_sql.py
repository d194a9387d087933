"""Several SimulatedFleet instances (threads, processes) on one SQL store share one fleet and serialize
per server, so an effect asked for concurrently under one key happens once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.ports import FleetError
from schemas.fleet import CycleState, PackageRun
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.records import EffectKind
from simulation.specs import SimServerSpec, build_fleet_specs
from simulation.store import SqlStore

PG_URL = os.environ.get("PATCHAAS_TEST_SIM_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[3]
THREADS = 8

pytestmark = pytest.mark.postgres


@pytest.fixture
def prefix() -> Iterator[str]:
    """A table prefix of this test's own (other tests share the database); its tables dropped after."""
    name = f"sim_t{uuid.uuid4().hex[:10]}_"
    try:
        store = SqlStore(PG_URL, prefix=name)
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} (run `make test`, which starts it): {exc}")
    yield name
    store.drop()
    store.dispose()


@pytest.fixture
def stores(prefix: str) -> Iterator[Callable[[], SqlStore]]:
    """Open more stores on the same tables (each its own engine, as in another process)."""
    opened: list[SqlStore] = []

    def open_store() -> SqlStore:
        store = SqlStore(PG_URL, prefix=prefix)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.dispose()


def package_run(cycle: int) -> PackageRun:
    return PackageRun(package_id="pkg-1", execution_id="exec-1", cycle=cycle)


def run_threads(target: Callable[[int], None]) -> list[BaseException]:
    """Run `target(i)` in THREADS threads released together; the exceptions they raised."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_two_fleets_on_one_database_see_each_others_state_and_effects(stores: Callable[[], SqlStore]) -> None:
    specs = build_fleet_specs(seed=3, count=4)
    writer = SimulatedFleet.create(specs, stores(), SimTimings.instant(), seed=3)
    reader = SimulatedFleet(stores(), SimTimings.instant(), seed=99)
    name = specs[0].name
    assert reader.specs() == specs

    writer.set_maintenance(name, True, "exec-1:maintenance_on:0")
    writer.invoke_package(name, "exec-1:package:1", package_run(1))
    before = reader.status(name)
    assert before.in_maintenance and before.pending_reboot
    report = reader.cycle_result(name, "exec-1:package:1")
    assert report is not None and report.state is CycleState.FINISHED and report.updates

    reader.reboot(name, "exec-1:reboot:1")
    after = writer.status(name)
    assert after.up and after.boot_id != before.boot_id and not after.pending_reboot
    assert writer.installed_kbs(name) == {u.kb for u in report.updates}

    kinds = [e.kind for e in writer.effects(name)]
    assert kinds == ["maintenance_on"] + ["install"] * len(report.updates) + ["reboot"]
    assert writer.effects(name) == reader.effects(name)
    assert reader.effects(kind=EffectKind.REBOOT)[0].key == "exec-1:reboot:1"


def test_concurrent_invocations_of_one_key_install_once(stores: Callable[[], SqlStore]) -> None:
    specs = build_fleet_specs(seed=5, count=1)
    SimulatedFleet.create(specs, stores(), SimTimings.instant(), seed=5)
    fleets = [SimulatedFleet(stores(), SimTimings.instant()) for _ in range(THREADS)]
    name = specs[0].name

    errors = run_threads(lambda i: fleets[i].invoke_package(name, "exec-1:package:1", package_run(1)))
    assert errors == []

    installs = fleets[0].effects(name, EffectKind.INSTALL)
    report = fleets[0].cycle_result(name, "exec-1:package:1")
    assert report is not None and report.updates
    assert sorted(e.kb or "" for e in installs) == sorted(u.kb for u in report.updates)
    assert {e.key for e in installs} == {"exec-1:package:1"}
    assert all(fleet.cycle_result(name, "exec-1:package:1") == report for fleet in fleets)


def test_concurrent_reboots_of_one_key_reboot_once(stores: Callable[[], SqlStore]) -> None:
    SimulatedFleet.create([SimServerSpec("VA1OSDPATCH01")], stores(), SimTimings.instant())
    fleets = [SimulatedFleet(stores(), SimTimings.instant()) for _ in range(THREADS)]

    errors = run_threads(lambda i: fleets[i].reboot("VA1OSDPATCH01", "exec-1:reboot:1"))
    assert errors == []

    assert len(fleets[0].effects("VA1OSDPATCH01", EffectKind.REBOOT)) == 1
    assert fleets[0].status("VA1OSDPATCH01").boot_id == "VA1OSDPATCH01-boot-2"


def test_another_process_sees_and_changes_the_same_fleet(prefix: str, stores: Callable[[], SqlStore]) -> None:
    fleet = SimulatedFleet.create([SimServerSpec("VA1OSDPATCH01")], stores(), SimTimings.instant())
    script = (
        "from simulation.fleet import SimulatedFleet\n"
        "from simulation.store import SqlStore\n"
        f"store = SqlStore({PG_URL!r}, prefix={prefix!r})\n"
        "fleet = SimulatedFleet.load(store)\n"
        "fleet.reboot('VA1OSDPATCH01', 'exec-1:reboot:1')\n"
        "print(fleet.status('VA1OSDPATCH01').boot_id)\n"
        "store.dispose()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "VA1OSDPATCH01-boot-2"
    assert fleet.status("VA1OSDPATCH01").boot_id == "VA1OSDPATCH01-boot-2"
    fleet.reboot("VA1OSDPATCH01", "exec-1:reboot:1")
    assert len(fleet.effects("VA1OSDPATCH01", EffectKind.REBOOT)) == 1


def test_create_keeps_the_fleet_unless_reset(stores: Callable[[], SqlStore]) -> None:
    store = stores()
    fleet = SimulatedFleet.create([SimServerSpec("VA1OSDPATCH01")], store)
    fleet.reboot("VA1OSDPATCH01", "exec-1:reboot:1")
    again = SimulatedFleet.create([SimServerSpec("VA1OSDPATCH01"), SimServerSpec("VA1OSDPATCH02")], store)
    assert again.status("VA1OSDPATCH01").boot_id == "VA1OSDPATCH01-boot-2"
    assert [s.name for s in again.specs()] == ["VA1OSDPATCH01", "VA1OSDPATCH02"]
    fresh = SimulatedFleet.create([SimServerSpec("VA1OSDPATCH03")], store, reset=True)
    assert [s.name for s in fresh.specs()] == ["VA1OSDPATCH03"] and fresh.effects() == []


def test_failed_call_changes_nothing(stores: Callable[[], SqlStore]) -> None:
    clock_value = [1_700_000_000.0]
    fleet = SimulatedFleet.create(
        [SimServerSpec("VA1OSDPATCH01", updates=build_fleet_specs(seed=1, count=1)[0].updates)],
        stores(),
        SimTimings(reboot_seconds=60),
        clock=lambda: clock_value[0],
    )
    fleet.reboot("VA1OSDPATCH01", "exec-1:reboot:1")
    with pytest.raises(FleetError, match="not reachable"):
        fleet.invoke_package("VA1OSDPATCH01", "exec-1:package:1", package_run(1))
    assert fleet.cycle_result("VA1OSDPATCH01", "exec-1:package:1") is None
    assert fleet.effects("VA1OSDPATCH01", EffectKind.INSTALL) == []


def test_sqlite_store_serializes_threads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    store = SqlStore(url)
    specs = build_fleet_specs(seed=8, count=1)
    fleet = SimulatedFleet.create(specs, store, SimTimings.instant(), seed=8)
    name = specs[0].name

    errors = run_threads(lambda i: fleet.invoke_package(name, "exec-1:package:1", package_run(1)))
    assert errors == []
    report = fleet.cycle_result(name, "exec-1:package:1")
    assert report is not None
    assert len(fleet.effects(name, EffectKind.INSTALL)) == len(report.updates) > 0
    other = SqlStore(url)
    assert SimulatedFleet(other).status(name).pending_reboot
    other.dispose()
    store.dispose()
