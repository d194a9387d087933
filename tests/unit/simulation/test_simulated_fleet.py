"""The simulated Windows fleet behaves like Windows Update and records every side effect once."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.ports import Fleet, FleetError, FleetRefused
from schemas.fleet import CycleReport, CycleState, PackageRun, PowerState, ResultCode
from simulation.catalog import (
    KB_PATTERN,
    SUPPORTED_OS_TYPES,
    WINDOWS_2012,
    WINDOWS_2012_UPDATES,
    WINDOWS_2012R2,
    WINDOWS_2012R2_UPDATES,
    CatalogUpdate,
    Classification,
    is_supported,
    kb_url,
)
from simulation.fleet import HRESULT_ALL_FAILED, SimTimings, SimulatedFleet
from simulation.records import EffectKind
from simulation.server_state import HRESULT_FATAL_INSTALL
from simulation.specs import (
    SETTLE_BEHAVIOURS,
    WINDOWS_BEHAVIOURS,
    Fault,
    Scenario,
    SimServerSpec,
    build_fleet_specs,
    demo_fleet_specs,
    server_name,
)
from simulation.store import MemoryStore

START = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def update(kb: str, wave: int = 0, reboot: int = 1, classification: str = "Security Updates") -> CatalogUpdate:
    return CatalogUpdate(
        kb, f"Security Update for Windows Server 2012 R2 ({kb})", kb_url(kb), Classification(classification),
        wave, reboot,
    )  # fmt: skip


def run_for(cycle: int, exclude: tuple[str, ...] = ()) -> PackageRun:
    return PackageRun(package_id="pkg-1", execution_id="exec-1", cycle=cycle, exclude_kbs=exclude)


def make_fleet(*specs: SimServerSpec, timings: SimTimings | None = None, clock: FakeClock | None = None,
               seed: int = 0) -> SimulatedFleet:  # fmt: skip
    return SimulatedFleet.create(specs, MemoryStore(), timings or SimTimings.instant(), seed, clock or FakeClock())


def cycle(fleet: SimulatedFleet, server: str, n: int, exclude: tuple[str, ...] = ()) -> CycleReport:
    """Invoke cycle `n` and read its (finished) report."""
    key = f"exec-1:package:{n}"
    fleet.invoke_package(server, key, run_for(n, exclude))
    report = fleet.cycle_result(server, key)
    assert report is not None and report.state is CycleState.FINISHED
    return report


def kbs(report: CycleReport) -> list[str]:
    return [u.kb for u in report.updates]


def patch_to_the_end(fleet: SimulatedFleet, server: str, max_cycles: int = 10) -> int:
    """Drive a server the way the orchestrator does; the number of cycles until nothing is left."""
    if fleet.status(server).pending_reboot:
        fleet.reboot(server, "exec-1:reboot:0")
    for n in range(1, max_cycles + 1):
        report = cycle(fleet, server, n)
        if report.reboot_required:
            fleet.reboot(server, f"exec-1:reboot:{n}")
        elif not report.updates:
            return n
    raise AssertionError(f"{server} still had updates after {max_cycles} cycles")


WAVES = (update("KB3021910", 0, 0, "Servicing Stack Updates"), update("KB3045685", 0, 1),
         update("KB3146723", 1, 1), update("KB3137728", 1, 0), update("KB3185331", 2, 1))  # fmt: skip


# --- the protocol -----------------------------------------------------------------------------


def test_simulated_fleet_implements_the_fleet_protocol() -> None:
    fleet: Fleet = make_fleet(SimServerSpec("VA1OSDPATCH01"))
    assert fleet.status("VA1OSDPATCH01").up


def test_unknown_server_is_refused() -> None:
    fleet = make_fleet(SimServerSpec("VA1OSDPATCH01"))
    with pytest.raises(FleetRefused, match="server VA1OSDPATCH99 not found"):
        fleet.status("VA1OSDPATCH99")
    with pytest.raises(FleetRefused):
        fleet.reboot("VA1OSDPATCH99", "k")


# --- waves ------------------------------------------------------------------------------------


def test_waves_are_offered_one_reboot_at_a_time() -> None:
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES))
    first = cycle(fleet, "S01", 1)
    assert kbs(first) == ["KB3021910", "KB3045685"]
    assert first.result_code is ResultCode.SUCCEEDED and first.reboot_required
    assert fleet.status("S01").pending_reboot
    fleet.reboot("S01", "exec-1:reboot:1")
    second = cycle(fleet, "S01", 2)
    assert kbs(second) == ["KB3146723", "KB3137728"] and second.reboot_required
    fleet.reboot("S01", "exec-1:reboot:2")
    assert kbs(cycle(fleet, "S01", 3)) == ["KB3185331"]
    fleet.reboot("S01", "exec-1:reboot:3")
    last = cycle(fleet, "S01", 4)
    assert last.updates == () and not last.reboot_required and last.result_code is ResultCode.SUCCEEDED
    assert fleet.installed_kbs("S01") == {u.kb for u in WAVES}


def test_update_waiting_for_a_reboot_is_not_offered_again_and_blocks_the_next_wave() -> None:
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES))
    cycle(fleet, "S01", 1)
    again = cycle(fleet, "S01", 2)
    assert again.updates == () and again.reboot_required
    assert fleet.installed_kbs("S01") == {"KB3021910"}  # the reboot-free SSU is committed at once


def test_normal_servers_need_two_to_four_cycles() -> None:
    specs = [s for s in build_fleet_specs(seed=11, count=60) if s.scenario is Scenario.NORMAL]
    fleet = make_fleet(*specs, seed=11)
    cycles = Counter(patch_to_the_end(fleet, spec.name) for spec in specs)
    assert set(cycles) <= {2, 3, 4}
    assert len(cycles) >= 2  # not every server the same
    for spec in specs:
        assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}


def test_reboot_behavior_can_request_is_decided_by_the_seed() -> None:
    spec = SimServerSpec("S01", updates=tuple(update(f"KB30000{i:02d}", 0, 2) for i in range(12)))

    def reboots(seed: int) -> tuple[bool, ...]:
        return tuple(u.reboot_required for u in cycle(make_fleet(spec, seed=seed), "S01", 1).updates)

    assert reboots(1) == reboots(1)
    assert len({reboots(seed) for seed in range(5)}) > 1
    assert {True, False} <= set(reboots(1) + reboots(2) + reboots(3))


# --- faults -----------------------------------------------------------------------------------


def test_kb_failing_once_succeeds_on_retry() -> None:
    spec = SimServerSpec("S01", updates=(update("KB3045685", 0, 1), update("KB3035126", 0, 0)),
                         faults={"KB3035126": Fault.FAIL_ONCE})  # fmt: skip
    fleet = make_fleet(spec)
    first = cycle(fleet, "S01", 1)
    results = {u.kb: u for u in first.updates}
    assert results["KB3035126"].result_code is ResultCode.FAILED
    assert results["KB3035126"].hresult == HRESULT_FATAL_INSTALL
    assert results["KB3045685"].result_code is ResultCode.SUCCEEDED
    assert first.result_code is ResultCode.SUCCEEDED_WITH_ERRORS and first.hresult == 0
    assert first.reboot_required  # a failed KB does not suppress the reboot the others need
    fleet.reboot("S01", "exec-1:reboot:1")
    retry = cycle(fleet, "S01", 2)
    assert kbs(retry) == ["KB3035126"] and retry.updates[0].result_code is ResultCode.SUCCEEDED
    assert retry.result_code is ResultCode.SUCCEEDED
    assert fleet.installed_kbs("S01") == {"KB3045685", "KB3035126"}


def test_kb_always_failing_fails_every_attempt_with_fatal_install_error() -> None:
    spec = SimServerSpec("S01", updates=(update("KB3045685", 0, 1),), faults={"KB3045685": Fault.ALWAYS_FAIL})
    fleet = make_fleet(spec)
    for n in (1, 2, 3):
        report = cycle(fleet, "S01", n)
        assert [(u.kb, u.result_code, u.hresult) for u in report.updates] == [
            ("KB3045685", ResultCode.FAILED, HRESULT_FATAL_INSTALL)
        ]
        assert report.result_code is ResultCode.FAILED and report.hresult == HRESULT_ALL_FAILED
        assert not report.reboot_required
    assert fleet.installed_kbs("S01") == set()
    assert len(fleet.effects("S01", EffectKind.INSTALL)) == 3


def test_always_failing_kb_does_not_block_later_waves() -> None:
    spec = SimServerSpec("S01", updates=(update("KB3045685", 0, 1), update("KB3035126", 0, 1),
                                         update("KB3185331", 1, 1)),
                         faults={"KB3035126": Fault.ALWAYS_FAIL})  # fmt: skip
    fleet = make_fleet(spec)
    cycle(fleet, "S01", 1)
    fleet.reboot("S01", "exec-1:reboot:1")
    assert kbs(cycle(fleet, "S01", 2)) == ["KB3035126", "KB3185331"]


def test_rolled_back_kb_is_offered_again_after_every_reboot() -> None:
    spec = SimServerSpec("S01", updates=(update("KB3045685", 0, 0), update("KB3185331", 1, 1)),
                         faults={"KB3045685": Fault.ROLLBACK})  # fmt: skip
    fleet = make_fleet(spec)
    for n in (1, 2, 3):
        report = cycle(fleet, "S01", n)
        assert "KB3045685" in kbs(report)
        rolled = next(u for u in report.updates if u.kb == "KB3045685")
        assert rolled.result_code is ResultCode.SUCCEEDED and rolled.reboot_required
        assert fleet.status("S01").pending_reboot
        fleet.reboot("S01", f"exec-1:reboot:{n}")
        assert "KB3045685" not in fleet.installed_kbs("S01")
    assert "KB3185331" in fleet.installed_kbs("S01")  # the loop does not block the next wave


def test_excluded_kbs_are_skipped_and_listed() -> None:
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES))
    report = cycle(fleet, "S01", 1, exclude=("KB3045685", "KB9999999"))
    assert kbs(report) == ["KB3021910"]
    assert report.excluded == ("KB3045685",)
    assert not report.reboot_required
    assert [e.kb for e in fleet.effects("S01", EffectKind.INSTALL)] == ["KB3021910"]


def test_up_to_date_server_finds_nothing() -> None:
    fleet = make_fleet(SimServerSpec("S01", scenario=Scenario.UP_TO_DATE))
    report = cycle(fleet, "S01", 1)
    assert report.updates == () and report.result_code is ResultCode.SUCCEEDED and not report.reboot_required


def test_unsupported_os_is_refused_by_the_package() -> None:
    spec = SimServerSpec("S01", os_type="CentOS 6 64-bit", scenario=Scenario.UNSUPPORTED_OS)
    fleet = make_fleet(spec)
    assert fleet.status("S01").os_type == "CentOS 6 64-bit"
    with pytest.raises(FleetRefused, match="does not support"):
        fleet.invoke_package("S01", "exec-1:package:1", run_for(1))
    assert fleet.cycle_result("S01", "exec-1:package:1") is None


# --- idempotency ------------------------------------------------------------------------------


def test_invoke_package_is_idempotent_per_key() -> None:
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES))
    first = cycle(fleet, "S01", 1)
    fleet.invoke_package("S01", "exec-1:package:1", run_for(1))
    assert fleet.cycle_result("S01", "exec-1:package:1") == first
    installs = fleet.effects("S01", "install")
    assert [e.kb for e in installs] == ["KB3021910", "KB3045685"]
    assert {e.key for e in installs} == {"exec-1:package:1"}


def test_reboot_is_idempotent_per_key_and_changes_the_boot_id() -> None:
    fleet = make_fleet(SimServerSpec("S01"))
    before = fleet.status("S01").boot_id
    fleet.reboot("S01", "exec-1:reboot:1")
    after = fleet.status("S01").boot_id
    fleet.reboot("S01", "exec-1:reboot:1")
    assert fleet.status("S01").boot_id == after != before
    assert len(fleet.effects("S01", EffectKind.REBOOT)) == 1
    fleet.reboot("S01", "exec-1:reboot:2")
    assert fleet.status("S01").boot_id not in (before, after)


def test_power_on_and_off_are_idempotent_per_key() -> None:
    fleet = make_fleet(SimServerSpec("S01"))
    fleet.power_off("S01", "exec-1:power_off:1")
    fleet.power_off("S01", "exec-1:power_off:1")
    assert fleet.status("S01").power_state is PowerState.STOPPED
    fleet.power_on("S01", "exec-1:power_on:1")
    fleet.power_off("S01", "exec-1:power_off:1")  # known key: does not stop it again
    fleet.power_on("S01", "exec-1:power_on:1")
    assert fleet.status("S01").power_state is PowerState.STARTED
    assert len(fleet.effects("S01", EffectKind.POWER_OFF)) == 1
    assert len(fleet.effects("S01", EffectKind.POWER_ON)) == 1


def test_maintenance_records_every_call_and_works_while_the_server_is_down() -> None:
    fleet = make_fleet(SimServerSpec("S01", power_state=PowerState.STOPPED, scenario=Scenario.POWERED_OFF))
    fleet.set_maintenance("S01", True, "exec-1:maintenance_on:0")
    fleet.set_maintenance("S01", True, "exec-1:maintenance_on:0")
    assert fleet.status("S01").in_maintenance
    fleet.set_maintenance("S01", False, "exec-1:maintenance_off:0")
    assert not fleet.status("S01").in_maintenance
    assert len(fleet.effects("S01", EffectKind.MAINTENANCE_ON)) == 2
    assert len(fleet.effects("S01", EffectKind.MAINTENANCE_OFF)) == 1
    assert [e.kind for e in fleet.effects("S01")] == ["maintenance_on", "maintenance_on", "maintenance_off"]


# --- time -------------------------------------------------------------------------------------


def test_cycle_result_is_running_until_the_package_finishes() -> None:
    clock = FakeClock()
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES), timings=SimTimings(package_seconds=60), clock=clock)
    assert fleet.cycle_result("S01", "exec-1:package:1") is None
    fleet.invoke_package("S01", "exec-1:package:1", run_for(1))
    running = fleet.cycle_result("S01", "exec-1:package:1")
    assert running is not None and running.state is CycleState.RUNNING
    assert running.updates == () and running.finished_at is None
    clock.advance(59)
    assert fleet.cycle_result("S01", "exec-1:package:1").state is CycleState.RUNNING  # type: ignore[union-attr]
    clock.advance(1)
    finished = fleet.cycle_result("S01", "exec-1:package:1")
    assert finished is not None and finished.state is CycleState.FINISHED
    assert finished.started_at == running.started_at
    assert finished.finished_at is not None
    assert (finished.finished_at - finished.started_at).total_seconds() == 60
    assert kbs(finished) == ["KB3021910", "KB3045685"]
    clock.advance(3600)
    assert fleet.cycle_result("S01", "exec-1:package:1") == finished


def test_server_is_down_while_rebooting_and_back_with_a_new_boot_id() -> None:
    clock = FakeClock()
    fleet = make_fleet(SimServerSpec("S01", updates=WAVES), timings=SimTimings(reboot_seconds=90), clock=clock)
    cycle(fleet, "S01", 1)
    before = fleet.status("S01").boot_id
    fleet.reboot("S01", "exec-1:reboot:1")
    clock.advance(89)
    down = fleet.status("S01")
    assert not down.up and down.power_state is PowerState.STARTED and down.boot_id == before
    with pytest.raises(FleetError, match="not reachable"):
        fleet.invoke_package("S01", "exec-1:package:2", run_for(2))
    assert fleet.cycle_result("S01", "exec-1:package:2") is None
    clock.advance(1)
    back = fleet.status("S01")
    assert back.up and back.boot_id != before and not back.pending_reboot
    assert fleet.installed_kbs("S01") == {"KB3021910", "KB3045685"}


def test_server_that_never_returns_stays_down() -> None:
    clock = FakeClock()
    spec = SimServerSpec("S01", scenario=Scenario.NEVER_RETURNS, updates=WAVES)
    fleet = make_fleet(spec, timings=SimTimings(reboot_seconds=60), clock=clock)
    cycle(fleet, "S01", 1)
    fleet.reboot("S01", "exec-1:reboot:1")
    clock.advance(365 * 24 * 3600)
    status = fleet.status("S01")
    assert not status.up and status.power_state is PowerState.STARTED
    with pytest.raises(FleetError, match="not reachable"):
        fleet.invoke_package("S01", "exec-1:package:2", run_for(2))


def test_powered_off_server_needs_power_on_before_the_package_runs() -> None:
    clock = FakeClock()
    spec = SimServerSpec("S01", power_state=PowerState.STOPPED, scenario=Scenario.POWERED_OFF, updates=WAVES)
    fleet = make_fleet(spec, timings=SimTimings(power_seconds=30), clock=clock)
    status = fleet.status("S01")
    assert status.power_state is PowerState.STOPPED and not status.up
    with pytest.raises(FleetError, match="not reachable"):
        fleet.invoke_package("S01", "exec-1:package:1", run_for(1))
    with pytest.raises(FleetError, match="cannot reboot"):
        fleet.reboot("S01", "exec-1:reboot:0")
    fleet.power_on("S01", "exec-1:power_on:0")
    starting = fleet.status("S01")
    assert starting.power_state is PowerState.STARTED and not starting.up
    clock.advance(30)
    started = fleet.status("S01")
    assert started.up and started.boot_id != status.boot_id
    assert kbs(cycle(fleet, "S01", 1)) == ["KB3021910", "KB3045685"]


def test_pending_reboot_is_reported_before_the_first_cycle() -> None:
    fleet = make_fleet(SimServerSpec("S01", scenario=Scenario.PENDING_REBOOT, updates=WAVES))
    assert fleet.status("S01").pending_reboot
    fleet.reboot("S01", "exec-1:reboot:0")
    assert not fleet.status("S01").pending_reboot


def test_cycle_on_a_server_with_a_pending_reboot_requires_a_reboot() -> None:
    fleet = make_fleet(SimServerSpec("S01", scenario=Scenario.PENDING_REBOOT))
    report = cycle(fleet, "S01", 1)
    assert report.updates == () and report.reboot_required


# --- fault injection --------------------------------------------------------------------------


def test_transient_errors_happen_before_anything_is_done() -> None:
    spec = SimServerSpec("S01", updates=WAVES)
    fleet = SimulatedFleet.create([spec], MemoryStore(), SimTimings.instant(), clock=FakeClock(),
                                  transient_error_rate=1.0)  # fmt: skip
    for call in (
        lambda: fleet.status("S01"),
        lambda: fleet.reboot("S01", "k1"),
        lambda: fleet.set_maintenance("S01", True, "k2"),
        lambda: fleet.invoke_package("S01", "k3", run_for(1)),
    ):
        with pytest.raises(FleetError, match="simulated control-plane error"):
            call()
    assert fleet.effects() == []
    calm = SimulatedFleet.load(fleet.store, clock=FakeClock())
    assert calm.status("S01").boot_id == "S01-boot-1"


def test_transient_errors_are_deterministic_from_the_seed() -> None:
    store = MemoryStore()
    SimulatedFleet.create([SimServerSpec("S01")], store)

    def outcomes(seed: int) -> list[bool]:
        fleet = SimulatedFleet.load(store, seed=seed, transient_error_rate=0.5)
        results = []
        for _ in range(40):
            try:
                fleet.status("S01")
                results.append(True)
            except FleetError:
                results.append(False)
        return results

    assert outcomes(3) == outcomes(3)
    assert 0 < sum(outcomes(3)) < 40


# --- fleets -----------------------------------------------------------------------------------


def test_same_seed_builds_identical_specs() -> None:
    assert build_fleet_specs(seed=42, count=50) == build_fleet_specs(seed=42, count=50)
    assert build_fleet_specs(seed=42, count=50) != build_fleet_specs(seed=43, count=50)


def test_server_names_follow_the_clc_rule() -> None:
    specs = build_fleet_specs(seed=1, count=101)
    assert [s.name for s in specs[:2]] == ["VA1OSDPATCH01", "VA1OSDPATCH02"]
    assert specs[98].name == "VA1OSDPATCH99" and specs[99].name == "VA1OSDPATCH100"
    assert server_name("uc1", "abc", "web", 7) == "UC1ABCWEB07"


def test_default_fleet_is_mostly_normal_with_every_scenario() -> None:
    specs = build_fleet_specs(seed=5, count=100)
    counts = Counter(s.scenario for s in specs)
    assert counts[Scenario.NORMAL] > 50
    by_name = (*WINDOWS_BEHAVIOURS, *SETTLE_BEHAVIOURS)
    assert all(counts[scenario] >= 1 for scenario in Scenario if scenario not in by_name)
    assert not any(counts[scenario] for scenario in by_name)  # asked for by name only
    supported = [s for s in specs if s.scenario is not Scenario.UNSUPPORTED_OS]
    assert {s.os_type for s in supported} == SUPPORTED_OS_TYPES
    assert all(not is_supported(s.os_type) for s in specs if s.scenario is Scenario.UNSUPPORTED_OS)
    assert all(s.power_state is PowerState.STOPPED for s in specs if s.scenario is Scenario.POWERED_OFF)


def test_scenarios_can_be_asked_for() -> None:
    specs = build_fleet_specs(seed=5, count=4, scenarios={Scenario.BROKEN_KB: 1, Scenario.ROLLBACK_KB: 2})
    assert [s.scenario for s in specs] == ["broken_kb", "rollback_kb", "rollback_kb", "normal"]
    assert list(specs[0].faults.values()) == [Fault.ALWAYS_FAIL]
    assert list(specs[1].faults.values()) == [Fault.ROLLBACK]
    with pytest.raises(ValueError):
        build_fleet_specs(seed=5, count=1, scenarios={Scenario.BROKEN_KB: 2})


def test_demo_fleet_covers_every_scenario() -> None:
    specs = demo_fleet_specs()
    assert 10 <= len(specs) <= 18
    counts = Counter(s.scenario for s in specs)
    assert set(counts) == set(Scenario) - {Scenario.LONG_CYCLE} and counts[Scenario.NORMAL] >= 2
    assert demo_fleet_specs() == specs


def test_create_keeps_an_existing_fleet_unless_reset() -> None:
    store = MemoryStore()
    fleet = SimulatedFleet.create([SimServerSpec("S01")], store)
    fleet.reboot("S01", "k")
    again = SimulatedFleet.create([SimServerSpec("S01"), SimServerSpec("S02")], store)
    assert again.status("S01").boot_id == "S01-boot-2"
    assert [s.name for s in again.specs()] == ["S01", "S02"]
    fresh = SimulatedFleet.create([SimServerSpec("S03")], store, reset=True)
    assert [s.name for s in fresh.specs()] == ["S03"] and fresh.effects() == []


def test_spec_rejects_faults_for_updates_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="faults"):
        SimServerSpec("S01", updates=WAVES, faults={"KB1234567": Fault.ALWAYS_FAIL})


# --- catalog ----------------------------------------------------------------------------------


@pytest.mark.parametrize("catalog", [WINDOWS_2012_UPDATES, WINDOWS_2012R2_UPDATES], ids=["2012", "2012R2"])
def test_catalog_updates_look_like_windows_update(catalog: tuple[CatalogUpdate, ...]) -> None:
    assert all(KB_PATTERN.match(u.kb) and u.title.endswith(f"({u.kb})") for u in catalog)
    assert len({u.kb for u in catalog}) == len(catalog)
    assert all(u.url == f"https://support.microsoft.com/en-us/kb/{u.kb[2:]}" for u in catalog)
    assert {u.wave for u in catalog if u.classification is Classification.SERVICING_STACK} == {0}
    for wave in {u.wave for u in catalog}:
        behaviours = {u.reboot_behavior for u in catalog if u.wave == wave}
        assert {0, 1} <= behaviours, f"wave {wave} needs a reboot-always and a reboot-free update"


def test_catalog_rejects_malformed_kbs() -> None:
    with pytest.raises(ValueError):
        CatalogUpdate("KB12", "t", "u", Classification.UPDATE, 0, 0)
    with pytest.raises(ValueError):
        CatalogUpdate("KB123456", "t", "u", Classification.UPDATE, 0, 3)


def test_supported_os_types() -> None:
    assert is_supported(WINDOWS_2012) and is_supported(WINDOWS_2012R2)
    assert not is_supported("Windows 2008 R2 Datacenter 64-bit") and not is_supported("CentOS 6 64-bit")
