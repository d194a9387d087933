"""The Python API operators import.

    from orchestrator.entrypoints.api import Patchaas
    patching = Patchaas.connect()                       # settings from PATCHAAS_* variables
    answers = patching.execute_package("OSD", ["VA1OSDPATCH01", "VA1OSDPATCH02"])
    answers = patching.execute_package_on_groups("OSD", ["va1-0001"])
    patching.history("OSD", "VA1OSDPATCH01")            # newest first, like GET …/patch
    patching.detail("OSD", "VA1OSDPATCH01", answers[0].execution_id)
    patching.cancel("OSD", "VA1OSDPATCH01", answers[0].execution_id, by="jane", reason="change freeze")

    # rate control: 10% of the servers at a time, stop after 2 failures, the canary group first
    patching.execute_package_on_groups("OSD", ["va1-0001"], max_concurrency="10%", max_errors=2,
                                       waves=[["va1-0002"]])
    # a patch window: Patch Tuesday + 3 days, 22:00 Berlin time, 4 hours, no new cycle in the last 30 minutes
    patching.create_window("OSD", "friday-after", groups=["va1-0001"], monthly="second Tuesday + 3 days at 22:00",
                           timezone="Europe/Berlin", duration="4h", cutoff="30m", max_concurrency=5)

Every call returns models from `schemas.patching` whose fields match the REST answers. Refusals raise
`orchestrator.service.ServiceError` (NotFound, Conflict) with a message meant for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from orchestrator.bootstrap import Container
from orchestrator.domain import rate_control
from orchestrator.services import compliance as compliance_mod
from orchestrator.services import rollouts, window_specs, windows
from orchestrator.services.errors import Conflict, NotFound, ServiceError
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from schemas.patching import ExecutionDetail, ExecutionSummary, PackageRequest, QueuedServer

__all__ = ["Conflict", "NotFound", "Patchaas", "ServiceError"]


def _rate(max_concurrency: str | int | None, max_errors: str | int | None,
          waves: Sequence[Sequence[str]] | None) -> rate_control.RateControl | None:
    if max_concurrency is None and max_errors is None and not waves:
        return None
    try:
        return rate_control.RateControl.parse(max_concurrency, max_errors, waves)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None


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
        max_concurrency: str | int | None = None,
        max_errors: str | int | None = None,
        waves: Sequence[Sequence[str]] | None = None,
    ) -> list[QueuedServer]:
        """Patch `servers` of account `alias`; one answer per server (queued with an execution id, or why not).
        `max_concurrency` / `max_errors` (a count or "10%") and `waves` (lists of group ids or server names)
        make it a rate-controlled rollout."""
        package = PackageRequest(packageId=package_id, parameters=dict(parameters or {}))
        rate = _rate(max_concurrency, max_errors, waves)
        return self.service.execute_package(alias, list(servers), package, requested_by, rate)

    def execute_package_on_groups(
        self,
        alias: str,
        group_ids: Sequence[str],
        package_id: str = DEFAULT_PACKAGE_ID,
        parameters: Mapping[str, Any] | None = None,
        requested_by: str = "python-api",
        max_concurrency: str | int | None = None,
        max_errors: str | int | None = None,
        waves: Sequence[Sequence[str]] | None = None,
    ) -> list[QueuedServer]:
        """Patch every server of the groups and their nested groups (rate-controlled as execute_package)."""
        package = PackageRequest(packageId=package_id, parameters=dict(parameters or {}))
        rate = _rate(max_concurrency, max_errors, waves)
        return self.service.execute_package_on_groups(alias, list(group_ids), package, requested_by, rate)

    def rollout(self, alias: str, rollout_id: int) -> rollouts.RolloutInfo:
        """A rollout: its limits, state, stop reason, and its executions counted by status."""
        return self.service.rollout(alias, rollout_id)

    def compliance(self, alias: str, groups: Sequence[str] = (),
                   stale_after: timedelta | None = None) -> compliance_mod.ComplianceReport:
        """Per server of the account (or of `groups`): compliant, non_compliant or unknown, from its most
        recent finished run (orchestrator/services/compliance.py)."""
        return compliance_mod.for_account(self.service, alias, groups, stale_after)

    # --- patch windows ------------------------------------------------------------------------

    def create_window(
        self,
        alias: str,
        name: str,
        servers: Sequence[str] = (),
        groups: Sequence[str] = (),
        cron: str | None = None,
        monthly: str | None = None,
        timezone: str = "UTC",
        duration: str | int = "4h",
        cutoff: str | int = "30m",
        max_concurrency: str | int | None = None,
        max_errors: str | int | None = None,
        waves: Sequence[Sequence[str]] = (),
        package_id: str = DEFAULT_PACKAGE_ID,
        parameters: Mapping[str, Any] | None = None,
        created_by: str = "python-api",
    ) -> windows.WindowInfo:
        """Schedule a patch window: a cron expression or a monthly rule ("second Tuesday + 3 days at 22:00")
        in `timezone`; no new update cycle starts in the last `cutoff` of its `duration`."""
        spec = window_specs.WindowSpec(name=name, servers=list(servers), groups=list(groups), cron=cron,
                                       monthly=monthly, timezone=timezone, duration=duration, cutoff=cutoff,
                                       max_concurrency=max_concurrency, max_errors=max_errors,
                                       waves=[list(w) for w in waves], package_id=package_id,
                                       parameters=dict(parameters or {}))
        return windows.WindowService(self.service).create(alias, spec, created_by)

    def list_windows(self, alias: str) -> list[windows.WindowInfo]:
        """The account's patch windows, with their next occurrences."""
        return windows.WindowService(self.service).list_windows(alias)

    def window(self, alias: str, window: int | str) -> windows.WindowInfo:
        """One window (by id or name) with its next and recent occurrences."""
        service = windows.WindowService(self.service)
        return service.get(alias, service.find(alias, str(window)))

    def update_window(self, alias: str, window: int | str, **changes: Any) -> windows.WindowInfo:
        """Change a window (by id or name): any argument of `create_window` but `created_by`, or
        `enabled=False` to pause it. Applies from the next occurrence that starts after the change."""
        service = windows.WindowService(self.service)
        if "waves" in changes:
            changes["waves"] = [list(w) for w in changes["waves"] or ()]
        by = changes.pop("by", None)  # who, for the event log's audit trail
        return service.update(alias, service.find(alias, str(window)), changes, by=by)

    def pause_window(self, alias: str, window: int | str) -> windows.WindowInfo:
        """No occurrence of the window starts until it is resumed (a running one goes on until its cutoff)."""
        return self.update_window(alias, window, enabled=False)

    def resume_window(self, alias: str, window: int | str) -> windows.WindowInfo:
        """Resume a paused window from its next occurrence."""
        return self.update_window(alias, window, enabled=True)

    def delete_window(self, alias: str, window: int | str, by: str | None = None) -> windows.WindowInfo:
        """Delete a window (by id or name): no further occurrence starts."""
        service = windows.WindowService(self.service)
        return service.delete(alias, service.find(alias, str(window)), by=by)

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
