"""The mutable state of one simulated server and how it changes: boots that complete when the clock
passes their end, what Windows Update offers (waves), and installs with their faults and reboot needs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from schemas.fleet import PowerState, ResultCode, UpdateResult
from simulation.catalog import REVISION_NUMBER, CatalogUpdate, RebootBehavior
from simulation.records import Document
from simulation.specs import NON_BLOCKING_FAULTS, Fault, Scenario, SimServerSpec

HRESULT_FATAL_INSTALL = 0x80070643  # ERROR_INSTALL_FAILURE: the common 2012 R2 install failure


@dataclass
class ServerState:
    """Everything about a server that changes; stored as a small JSON document."""

    seed: int
    power_state: PowerState
    in_maintenance: bool = False
    boots: int = 0
    booting_until: float | None = None  # powered on but still booting (rebooting or starting) until then
    stuck: bool = False  # a boot that never completes (NEVER_RETURNS)
    committed: list[str] = field(default_factory=list)  # installed and, if needed, rebooted since
    pending: list[str] = field(default_factory=list)  # installed, waiting for a reboot
    pending_flag: bool = False  # a reboot pending from before the simulation (PENDING_REBOOT)
    attempts: dict[str, int] = field(default_factory=dict)  # install attempts per KB
    epoch: float = 0.0  # the fleet's clock when the server was created: update release ages count back from it
    hidden_pending: bool = False  # a reboot pending that the control plane does not report (REBOOT_PENDING_INSTALL)
    searches: int = 0  # package runs that searched (PARTIAL_SEARCH: the first fails, the second is partial)
    runs: int = 0  # package runs that had something to install (INSTALLER_BUSY, PACKAGE_DIES, LONG_CYCLE)
    configuring_until: float | None = None  # up but still "configuring updates" until then (CONFIGURING_UPDATES)
    services_down: bool = False  # its services did not start after the last boot (SERVICE_DOWN)

    @property
    def up(self) -> bool:
        return self.power_state is PowerState.STARTED and self.booting_until is None and not self.stuck

    def configuring(self, now: float) -> bool:
        """Up, answering, and still configuring updates (the servicing stack is busy)."""
        return self.up and self.configuring_until is not None and now < self.configuring_until

    @property
    def pending_reboot(self) -> bool:
        return self.pending_flag or bool(self.pending)

    def boot_id(self, name: str) -> str:
        return f"{name}-boot-{self.boots}"

    @classmethod
    def initial(cls, spec: SimServerSpec, seed: int, epoch: float = 0.0) -> ServerState:
        started = spec.power_state is PowerState.STARTED
        return cls(
            seed=seed,
            epoch=epoch,
            power_state=spec.power_state,
            boots=1 if started else 0,
            pending_flag=spec.scenario is Scenario.PENDING_REBOOT,
            hidden_pending=spec.scenario is Scenario.REBOOT_PENDING_INSTALL,
        )

    def to_doc(self) -> Document:
        return {
            "seed": self.seed,
            "power": self.power_state.value,
            "maint": self.in_maintenance,
            "boots": self.boots,
            "booting_until": self.booting_until,
            "stuck": self.stuck,
            "committed": self.committed,
            "pending": self.pending,
            "pending_flag": self.pending_flag,
            "attempts": self.attempts,
            "epoch": self.epoch,
            "hidden_pending": self.hidden_pending,
            "searches": self.searches,
            "runs": self.runs,
            "configuring_until": self.configuring_until,
            "services_down": self.services_down,
        }

    @classmethod
    def from_doc(cls, doc: Document) -> ServerState:
        return cls(
            seed=doc["seed"],
            power_state=PowerState(doc["power"]),
            in_maintenance=doc["maint"],
            boots=doc["boots"],
            booting_until=doc["booting_until"],
            stuck=doc["stuck"],
            committed=list(doc["committed"]),
            pending=list(doc["pending"]),
            pending_flag=doc["pending_flag"],
            attempts=dict(doc["attempts"]),
            epoch=doc.get("epoch", 0.0),
            hidden_pending=doc.get("hidden_pending", False),
            searches=doc.get("searches", 0),
            runs=doc.get("runs", 0),
            configuring_until=doc.get("configuring_until"),
            services_down=doc.get("services_down", False),
        )


def advance(spec: SimServerSpec, state: ServerState, now: float) -> None:
    """Complete a boot whose time has come: new boot id, pending installs committed or rolled back."""
    if state.stuck or state.booting_until is None or now < state.booting_until:
        return
    state.boots += 1
    state.booting_until = None
    if spec.scenario is Scenario.SERVICE_DOWN and state.pending:  # an install's reboot: its services stay down
        state.services_down = True
    for kb in state.pending:
        if spec.faults.get(kb) is not Fault.ROLLBACK:
            state.committed.append(kb)
    state.pending = []
    state.pending_flag = False
    state.hidden_pending = False


def search(spec: SimServerSpec, state: ServerState) -> list[CatalogUpdate]:
    """What WUA offers now: missing updates not waiting for a reboot, up to the first wave still blocked."""
    installed = set(state.committed) | set(state.pending)
    blocking = [
        update.wave
        for update in spec.updates
        if update.kb not in state.committed and spec.faults.get(update.kb) not in NON_BLOCKING_FAULTS
    ]
    open_wave = min(blocking, default=None)
    return sorted(
        (u for u in spec.updates if u.kb not in installed and (open_wave is None or u.wave <= open_wave)),
        key=lambda u: u.wave,
    )


def scanned(update: CatalogUpdate) -> UpdateResult:
    """An update found by a scan-only cycle: reported, not installed."""
    return UpdateResult(
        kb=update.kb, title=update.title, url=update.url, classification=str(update.classification),
        result_code=ResultCode.NOT_STARTED, hresult=0, reboot_required=update.reboot_behavior == 1,
        update_id=update.update_id, revision_number=REVISION_NUMBER,
    )


def install(spec: SimServerSpec, state: ServerState, update: CatalogUpdate) -> UpdateResult:
    """Install one update: its result, and the state change it makes."""
    attempt = state.attempts.get(update.kb, 0) + 1
    state.attempts[update.kb] = attempt
    fault = spec.faults.get(update.kb)
    failed = fault is Fault.ALWAYS_FAIL or (fault is Fault.FAIL_ONCE and attempt == 1)
    reboot = False
    if not failed:
        reboot = fault is Fault.ROLLBACK or _needs_reboot(state.seed, spec.name, update)
        (state.pending if reboot else state.committed).append(update.kb)
    return UpdateResult(
        kb=update.kb,
        title=update.title,
        url=update.url,
        classification=update.classification.value,
        result_code=ResultCode.FAILED if failed else ResultCode.SUCCEEDED,
        hresult=HRESULT_FATAL_INSTALL if failed else 0,
        reboot_required=reboot,
        update_id=update.update_id,
        revision_number=REVISION_NUMBER,
    )


def _needs_reboot(seed: int, server: str, update: CatalogUpdate) -> bool:
    """RebootBehavior 1 always, 0 never, 2 decided once per (seed, server, KB)."""
    if update.reboot_behavior == RebootBehavior.CAN_REQUEST:
        digest = hashlib.sha256(f"{seed}:{server}:{update.kb}".encode()).digest()
        return digest[0] % 2 == 0
    return update.reboot_behavior == RebootBehavior.ALWAYS
