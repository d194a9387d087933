"""The Python API operators import.

    from orchestrator.api import Patchaas
    patching = Patchaas.connect()                       # settings from PATCHAAS_* variables
    answers = patching.execute_package("OSD", ["VA1OSDPATCH01", "VA1OSDPATCH02"])
    answers = patching.execute_package_on_groups("OSD", ["va1-0001"])
    patching.history("OSD", "VA1OSDPATCH01")            # newest first, like GET …/patch
    patching.detail("OSD", "VA1OSDPATCH01", answers[0].execution_id)
    patching.cancel("OSD", "VA1OSDPATCH01", answers[0].execution_id, by="jane", reason="change freeze")

Every call returns models from `schemas.patching` whose fields match the REST answers. Refusals raise
`orchestrator.service.ServiceError` (NotFound, Conflict) with a message meant for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.bootstrap import Container
from orchestrator.service import Conflict, NotFound, ServiceError
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from schemas.patching import ExecutionDetail, ExecutionSummary, PackageRequest, QueuedServer

__all__ = ["Conflict", "NotFound", "Patchaas", "ServiceError"]


class Patchaas:
    """Execute packages, read history and detail, cancel: one object over a wired container."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.service = container.service

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Patchaas:
        """Connect to the deployment described by `settings` (default: the PATCHAAS_* environment)."""
        from orchestrator import bootstrap
        from workers.app import create_app
        from workers.dispatch import CeleryDispatcher

        settings = settings or Settings()
        app = create_app(settings)
        return cls(bootstrap.build(settings, dispatcher=CeleryDispatcher(app)))

    def execute_package(
        self,
        alias: str,
        servers: Sequence[str],
        package_id: str = DEFAULT_PACKAGE_ID,
        parameters: Mapping[str, Any] | None = None,
        requested_by: str = "python-api",
    ) -> list[QueuedServer]:
        """Patch `servers` of account `alias`; one answer per server (queued with an execution id, or why not)."""
        package = PackageRequest(packageId=package_id, parameters=dict(parameters or {}))
        return self.service.execute_package(alias, list(servers), package, requested_by)

    def execute_package_on_groups(
        self,
        alias: str,
        group_ids: Sequence[str],
        package_id: str = DEFAULT_PACKAGE_ID,
        parameters: Mapping[str, Any] | None = None,
        requested_by: str = "python-api",
    ) -> list[QueuedServer]:
        """Patch every server of the groups and their nested groups."""
        package = PackageRequest(packageId=package_id, parameters=dict(parameters or {}))
        return self.service.execute_package_on_groups(alias, list(group_ids), package, requested_by)

    def history(self, alias: str, server: str, limit: int = 50, before: str | None = None) -> list[ExecutionSummary]:
        """The server's executions, newest first; pass the last id as `before` for the next page."""
        return self.service.history(alias, server, limit=limit, before=before)

    def detail(self, alias: str, server: str, execution_id: str) -> ExecutionDetail:
        """One execution and every patch it attempted."""
        return self.service.detail(alias, server, execution_id)

    def cancel(
        self, alias: str, server: str, execution_id: str, by: str, reason: str | None = None
    ) -> ExecutionDetail:
        """Stop after the current step; the server leaves maintenance mode. Who and why are recorded."""
        return self.service.cancel(alias, server, execution_id, by, reason)

    def close(self) -> None:
        """Release database connections."""
        self.container.close()
