"""A fleet that sends each call to the driver of the server's OS family: Windows servers to the configured
Windows driver (simulated or clc), Linux servers to the `ssh` driver. The family comes from the server's
`os_type` in the inventory (`orchestrator.packages.os_family`)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import packages
from orchestrator.persistence import db, models
from orchestrator.ports import Fleet, FleetRefused, settled_by_status
from orchestrator.settings import Settings
from schemas.fleet import CycleReport, PackageRun, ServerStatus, SettleStatus
from schemas.hooks import CommandResult


class RoutingFleet:
    """The Fleet protocol, dispatched per server."""

    def __init__(self, windows: Fleet, linux: Fleet, os_type_of: Callable[[str], str | None]) -> None:
        self.windows = windows
        self.linux = linux
        self.os_type_of = os_type_of
        self._family: dict[str, str] = {}  # a server's OS family does not change under a running execution

    @classmethod
    def from_settings(cls, settings: Settings, windows: Fleet, linux: Fleet) -> RoutingFleet:
        sessions = db.session_factory(db.create_engine_for(settings.database_url))
        return cls(windows, linux, _inventory_lookup(sessions))

    def driver(self, server: str) -> Fleet:
        family = self._family.get(server)
        if family is None:
            os_type = self.os_type_of(server)
            if os_type is None:
                raise FleetRefused(f"{server} is not in the inventory")
            family = self._family[server] = packages.os_family(os_type)
        if family == "linux":
            return self.linux
        if family == "windows":
            return self.windows
        raise FleetRefused(f"{server}: no fleet driver for its operating system")

    def status(self, server: str) -> ServerStatus:
        return self.driver(server).status(server)

    def settled(self, server: str) -> SettleStatus:
        driver = self.driver(server)
        settled = getattr(driver, "settled", None)
        return settled(server) if settled is not None else settled_by_status(driver.status(server))

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        self.driver(server).set_maintenance(server, on, key)

    def power_on(self, server: str, key: str) -> None:
        self.driver(server).power_on(server, key)

    def power_off(self, server: str, key: str) -> None:
        self.driver(server).power_off(server, key)

    def reboot(self, server: str, key: str) -> None:
        self.driver(server).reboot(server, key)

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        self.driver(server).invoke_package(server, key, run)

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        return self.driver(server).cycle_result(server, key)

    def run_command(self, server: str, key: str, command: str, timeout: float) -> CommandResult:
        driver = self.driver(server)
        run = getattr(driver, "run_command", None)
        if run is None:
            raise FleetRefused(f"{server}: its fleet driver cannot run commands on servers")
        result: CommandResult = run(server, key, command, timeout)
        return result


def _inventory_lookup(sessions: sessionmaker[Session]) -> Callable[[str], str | None]:
    def os_type_of(server: str) -> str | None:
        with sessions() as session:
            row = session.get(models.Server, server)
            return row.os_type if row is not None else None

    return os_type_of
