"""What a simulated Windows server is (`SimServerSpec`: name, OS, power state, scenario, missing updates
and their faults) and deterministic fleets of them, identical for the same seed (`build_fleet_specs`)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from schemas.fleet import PowerState
from simulation.catalog import (
    UNSUPPORTED_OS_EXAMPLES,
    WINDOWS_2012,
    WINDOWS_2012R2,
    CatalogUpdate,
    Classification,
    RebootBehavior,
    catalog_for,
    is_supported,
    waves,
)
from simulation.records import Document


class Scenario(StrEnum):
    """How a simulated server behaves during a patch run."""

    NORMAL = "normal"  # 2-4 cycles of waves, every update installs
    FLAKY_KB = "flaky_kb"  # one update fails its first install and succeeds on retry
    BROKEN_KB = "broken_kb"  # one update fails every install (0x80070643)
    ROLLBACK_KB = "rollback_kb"  # one update installs, then rolls back at every reboot: an update loop
    NEVER_RETURNS = "never_returns"  # its first reboot never completes: the server stays down forever
    POWERED_OFF = "powered_off"  # starts stopped: the run must power it on (and off again)
    PENDING_REBOOT = "pending_reboot"  # a reboot is already pending before the first cycle
    UNSUPPORTED_OS = "unsupported_os"  # an OS the update package does not support
    UP_TO_DATE = "up_to_date"  # nothing to install
    # how real Windows Update behaves (issue 12): each as windows-update.ps1 reports it (simulation/package_run.py)
    REBOOT_PENDING_INSTALL = "reboot_pending_install"  # a reboot pending that the control plane does not report:
    #   the first install is refused (blocked_by reboot_pending, 0x80240016) until the server is rebooted
    EXCLUSIVE_UPDATE = "exclusive_update"  # servicing stack updates need exclusive handling: installed alone,
    #   the rest of the cycle left in `remaining`
    PARTIAL_SEARCH = "partial_search"  # the first search fails (result 4, a warning), the second is partial (3)
    INSTALLER_BUSY = "installer_busy"  # the first two installing cycles find the installer busy, then the lock held
    PACKAGE_DIES = "package_dies"  # the first installing cycle's task dies: the outer run's failure report (error)
    LONG_CYCLE = "long_cycle"  # the first installing cycle outlasts the package timeout, sending heartbeats
    # issue 14: settled after every reboot
    CONFIGURING_UPDATES = "configuring_updates"  # after each reboot it answers (new boot id) but is still configuring
    #   updates (TrustedInstaller busy) for SimTimings.configure_seconds: the engine waits it out (settling)
    SERVICE_DOWN = "service_down"  # patches and reboots fine, but its services do not start again after the first
    #   reboot that follows an install: an on-server health check (`service`) catches it


class Fault(StrEnum):
    """What goes wrong when one update is installed."""

    FAIL_ONCE = "fail_once"  # the first attempt fails (0x80070643), the next succeeds
    ALWAYS_FAIL = "always_fail"  # every attempt fails (0x80070643)
    ROLLBACK = "rollback"  # succeeds and needs a reboot, then reverts at that reboot and is offered again


NON_BLOCKING_FAULTS: frozenset[Fault] = frozenset({Fault.ALWAYS_FAIL, Fault.ROLLBACK})


@dataclass(frozen=True)
class SimServerSpec:
    """What a simulated server is: name, OS, initial power state, scenario, the updates it is missing and
    the faults of some of them (KB -> fault)."""

    name: str
    os_type: str = WINDOWS_2012R2
    power_state: PowerState = PowerState.STARTED
    scenario: Scenario = Scenario.NORMAL
    updates: tuple[CatalogUpdate, ...] = ()
    faults: Mapping[str, Fault] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a server needs a name")
        object.__setattr__(self, "power_state", PowerState(self.power_state))
        object.__setattr__(self, "scenario", Scenario(self.scenario))
        object.__setattr__(self, "updates", tuple(self.updates))
        kbs = [update.kb for update in self.updates]
        if len(set(kbs)) != len(kbs):
            raise ValueError(f"{self.name}: an update is listed twice")
        unknown = set(self.faults) - set(kbs)
        if unknown:
            raise ValueError(f"{self.name}: faults for updates it does not have: {sorted(unknown)}")
        faults = {kb: Fault(fault) for kb, fault in self.faults.items()}
        object.__setattr__(self, "faults", MappingProxyType(faults))

    def update(self, kb: str) -> CatalogUpdate:
        """The update `kb` of this server."""
        for candidate in self.updates:
            if candidate.kb == kb:
                return candidate
        raise KeyError(kb)

    def to_doc(self) -> Document:
        """The spec as a JSON-able document."""
        return {
            "name": self.name,
            "os_type": self.os_type,
            "power_state": self.power_state.value,
            "scenario": self.scenario.value,
            "updates": [
                [u.kb, u.title, u.url, u.classification.value, u.wave, u.reboot_behavior, u.age_days, u.msrc_severity]
                for u in self.updates
            ],
            "faults": {kb: fault.value for kb, fault in self.faults.items()},
        }

    @classmethod
    def from_doc(cls, doc: Document) -> SimServerSpec:
        """The spec `to_doc` wrote."""
        updates = tuple(  # the age and severity (the last two) are missing from specs written before them
            CatalogUpdate(kb, title, url, Classification(classification), wave, reboot, *rest)
            for kb, title, url, classification, wave, reboot, *rest in doc["updates"]
        )
        return cls(
            name=doc["name"],
            os_type=doc["os_type"],
            power_state=PowerState(doc["power_state"]),
            scenario=Scenario(doc["scenario"]),
            updates=updates,
            faults={kb: Fault(fault) for kb, fault in doc["faults"].items()},
        )


# --- deterministic fleets ----------------------------------------------------------------------

WINDOWS_BEHAVIOURS: tuple[Scenario, ...] = (
    Scenario.REBOOT_PENDING_INSTALL, Scenario.EXCLUSIVE_UPDATE, Scenario.PARTIAL_SEARCH, Scenario.INSTALLER_BUSY,
    Scenario.PACKAGE_DIES, Scenario.LONG_CYCLE,
)
"""The scenarios of issue 12. A default fleet (`build_fleet_specs` without `scenarios`) keeps to the others, so the
soak and chaos runs' expectations stand; ask for these by name (the demo has every one but LONG_CYCLE, which
needs a package timeout shorter than a demo's patience)."""
SETTLE_BEHAVIOURS: tuple[Scenario, ...] = (Scenario.CONFIGURING_UPDATES, Scenario.SERVICE_DOWN)
"""The scenarios of issue 14: like WINDOWS_BEHAVIOURS, only when asked for by name (and in the demo)."""
_OTHER_SCENARIOS: tuple[Scenario, ...] = tuple(
    s for s in Scenario if s is not Scenario.NORMAL and s not in WINDOWS_BEHAVIOURS and s not in SETTLE_BEHAVIOURS
)


def server_name(datacenter: str, alias: str, custom: str, number: int) -> str:
    """A CLC server name: datacenter + account alias + custom name + incrementor (01..99, then 100...)."""
    if number < 1:
        raise ValueError(f"server numbers start at 1, not {number}")
    return f"{datacenter}{alias}{custom}{number:02d}".upper()


def build_fleet_specs(
    seed: int,
    count: int,
    datacenter: str = "VA1",
    alias: str = "OSD",
    custom: str = "PATCH",
    scenarios: Mapping[Scenario, int] | None = None,
) -> list[SimServerSpec]:
    """`count` servers, identical for the same arguments.

    Without `scenarios`, about two thirds are NORMAL and every other scenario but WINDOWS_BEHAVIOURS gets
    count // 24 servers (none below 24 servers), shuffled by the seed. With `scenarios`, servers take them in
    the mapping's order and NORMAL fills the rest. The OS alternates 2012 / 2012 R2 (UNSUPPORTED_OS aside).
    """
    if count < 0:
        raise ValueError(f"count {count} is negative")
    if scenarios is None:
        each = count // 24
        plan = [scenario for scenario in _OTHER_SCENARIOS for _ in range(each)]
        plan += [Scenario.NORMAL] * (count - len(plan))
        random.Random(f"{seed}:plan").shuffle(plan)
    else:
        plan = [Scenario(scenario) for scenario, n in scenarios.items() for _ in range(n)]
        if len(plan) > count:
            raise ValueError(f"{len(plan)} scenarios asked for but only {count} servers")
        plan += [Scenario.NORMAL] * (count - len(plan))
    specs: list[SimServerSpec] = []
    unsupported = 0
    for index, scenario in enumerate(plan):
        name = server_name(datacenter, alias, custom, index + 1)
        os_type = WINDOWS_2012 if index % 2 == 0 else WINDOWS_2012R2
        if scenario is Scenario.UNSUPPORTED_OS:
            os_type = UNSUPPORTED_OS_EXAMPLES[unsupported % len(UNSUPPORTED_OS_EXAMPLES)]
            unsupported += 1
        specs.append(spec_for(name, scenario, os_type, random.Random(f"{seed}:{name}")))
    return specs


def spec_for(name: str, scenario: Scenario, os_type: str, rng: random.Random) -> SimServerSpec:
    """A server of `scenario`: 1 to 3 waves of updates picked from its OS's catalog, plus its fault."""
    power = PowerState.STOPPED if scenario is Scenario.POWERED_OFF else PowerState.STARTED
    if scenario in (Scenario.UNSUPPORTED_OS, Scenario.UP_TO_DATE) or not is_supported(os_type):
        return SimServerSpec(name, os_type, power, scenario)
    updates = _pick_updates(catalog_for(os_type), rng.choice((1, 2, 2, 3)), rng)
    faults: dict[str, Fault] = {}
    fault = {
        Scenario.FLAKY_KB: Fault.FAIL_ONCE,
        Scenario.BROKEN_KB: Fault.ALWAYS_FAIL,
        Scenario.ROLLBACK_KB: Fault.ROLLBACK,
    }.get(scenario)
    if fault is not None:
        candidates = [u for u in updates if u.classification is not Classification.SERVICING_STACK]
        faults[rng.choice(candidates).kb] = fault
    return SimServerSpec(name, os_type, power, scenario, updates, faults)


def _pick_updates(
    catalog: tuple[CatalogUpdate, ...], wave_count: int, rng: random.Random
) -> tuple[CatalogUpdate, ...]:
    """The first `wave_count` waves: per wave one update that always reboots plus a few others; wave 0
    also one servicing stack update. Each picked wave then costs exactly one reboot."""
    picked: list[CatalogUpdate] = []
    for wave in waves(catalog)[:wave_count]:
        pool = [u for u in catalog if u.wave == wave]
        chosen = {rng.choice([u for u in pool if u.reboot_behavior == RebootBehavior.ALWAYS]).kb}
        stacks = [u for u in pool if u.classification is Classification.SERVICING_STACK]
        if stacks:
            chosen.add(rng.choice(stacks).kb)
        rest = [u for u in pool if u.kb not in chosen]
        chosen.update(u.kb for u in rng.sample(rest, rng.randint(1, min(4, len(rest)))))
        picked.extend(u for u in pool if u.kb in chosen)
    return tuple(picked)


DEMO_SCENARIOS: tuple[Scenario, ...] = (
    *_OTHER_SCENARIOS, *(s for s in WINDOWS_BEHAVIOURS if s is not Scenario.LONG_CYCLE), *SETTLE_BEHAVIOURS
)


def demo_fleet_specs() -> list[SimServerSpec]:
    """Sixteen servers for `patchaas demo`: every scenario once but LONG_CYCLE (its cycle outlasts the package
    timeout: an hour by default), NORMAL three times."""
    scenarios = {Scenario.NORMAL: 3, **{scenario: 1 for scenario in DEMO_SCENARIOS}}
    return build_fleet_specs(seed=2016, count=sum(scenarios.values()), scenarios=scenarios)
