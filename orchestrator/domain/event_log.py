"""The event log (issue 14, part 4): the kinds of significant facts, and the ones a transition of the state
machine implies, derived from its Decision alone.

Pure: the engine writes what `of_decision` returns in the transition's own transaction
(orchestrator/engine/event_log.py); the services write the audit kinds (who requested, cancelled, changed
a window, …) where they decide them. `machine.events` are something else: what happened when a command ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain import messages
from orchestrator.domain.events import Decision
from orchestrator.domain.execution import ExecutionView, State
from orchestrator.domain.health_points import HEALTH_HOLD

CLEANUP_STOPPED = "cleanup stopped"  # what `machine._abandon` writes when cleanup itself could not be done

KINDS: Mapping[str, str] = {
    # runs (derived from the state machine's decisions, except run.requested and run.cancel_requested)
    "run.requested": "an operator, a script or a window asked to patch a server",
    "run.started": "the run left `requested`: it is working on the server",
    "cycle.ended": "one cycle of the update package finished (what it offered, installed, failed)",
    "kb.quarantined": "an update failed too often or came back after install: the next cycles exclude it",
    "run.ended": "the run reached completed, failed or cancelled (also a server skipped by its rollout)",
    "server.left_in_maintenance": "a run ended without turning maintenance mode off: check the server",
    "run.cancel_requested": "someone asked a running execution to stop",
    # rollouts and patch windows
    "rollout.halted": "a rollout crossed its error threshold (or its window closed): nothing new starts",
    "window.opened": "a patch window's occurrence started (its rollout was created)",
    "window.closed": "a patch window's occurrence reached its end minus cutoff: no new cycle starts",
    "window.created": "a patch window was created",
    "window.updated": "a patch window's definition changed",
    "window.paused": "a patch window was paused",
    "window.resumed": "a patch window was resumed",
    "window.deleted": "a patch window was deleted",
    # users and webhooks
    "user.created": "a user of the REST API was created",
    "user.tokens_revoked": "every bearer token of a user was revoked",
    "webhook.created": "a webhook subscription was created",
    "webhook.deleted": "a webhook subscription was deleted",
    "webhook.disabled": "a webhook subscription kept failing and was disabled",
    "webhook.enabled": "a disabled webhook subscription was enabled again",
    # pre/post hooks (issue 14 part 3)
    "hook.created": "a hook of the account was created",
    "hook.updated": "a hook of the account was changed",
    "hook.deleted": "a hook of the account was deleted",
    "hook.failed": "a hook failed (or its call was interrupted) at a point of a run",
    # health checks (issue 14 part 2)
    "health_check.failed": "a health check of a run failed its last attempt (baseline, after a reboot, or final)",
}


@dataclass(frozen=True)
class Fact:
    """One event to record: its kind, what it says, the execution it is about and who caused it."""

    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    execution_id: str | None = None
    actor: str | None = None


def of_decision(old: ExecutionView, decision: Decision) -> list[Fact]:
    """The events a saved transition from `old` to `decision.view` implies (most transitions imply none)."""
    new = decision.view
    facts: list[Fact] = []
    base: dict[str, Any] = {"server": old.server}
    if old.state is State.REQUESTED and new.state is not State.REQUESTED and not new.terminal:
        facts.append(Fact("run.started", {**base, "state": new.state.value}, old.id))
    record = decision.initiation
    if record is not None:
        facts.append(Fact("cycle.ended", {
            **base, "cycle": record.cycle, "updatesFound": record.updates_found,
            "installed": sorted(p.kb for p in record.patches if p.status == "completed"),
            "failed": sorted(p.kb for p in record.patches if p.status == "failed"),
            "rebootRequired": record.reboot_required, "resultCode": record.result_code,
            "hresult": messages.hresult_hex(record.hresult),
        }, old.id))
    for kb in sorted(set(new.quarantined) - set(old.quarantined)):
        facts.append(Fact("kb.quarantined", {**base, "kb": kb, "reason": new.quarantined[kb], "cycle": new.cycle},
                          old.id))
    for check in decision.health:
        if check.status == "failed":
            facts.append(Fact("health_check.failed", {
                **base, "check": check.name, "kind": check.kind, "target": check.target, "phase": check.phase,
                "cycle": check.cycle, "attempts": check.attempt, "output": check.output[:500],
            }, old.id))
    if new.terminal:
        facts.append(Fact("run.ended", {
            **base, "status": new.state.value, "reason": new.failure_reason, "cycles": new.cycle,
            "installedCount": new.installed_count, "quarantined": dict(sorted(new.quarantined.items())),
            "cancelledBy": new.cancelled_by if new.state is State.CANCELLED else None,
        }, old.id))
        if left_in_maintenance(old, new):
            facts.append(Fact("server.left_in_maintenance", {**base, "reason": new.failure_reason}, old.id))
    return facts


def left_in_maintenance(old: ExecutionView, new: ExecutionView) -> bool:
    """The run ended while turning maintenance mode off failed: the flag is still on (the end email says
    "Maintenance mode could NOT be turned off"). A cleanup that stopped at restoring power had turned it off."""
    if new.terminal and old.state is State.CHECKING_HEALTH and HEALTH_HOLD in (new.failure_reason or ""):
        return True  # a health check failed under onHealthFailure fail: left on by policy
    return (new.terminal and old.state is State.EXITING_MAINTENANCE
            and CLEANUP_STOPPED in (new.failure_reason or "") and CLEANUP_STOPPED not in (old.failure_reason or ""))


def skipped(execution_id: str, server: str, reason: str, rollout_id: int) -> Fact:
    """The run.ended of an execution its rollout skipped (never touched: no run.started before it)."""
    return Fact("run.ended", {"server": server, "status": State.CANCELLED.value, "reason": reason, "cycles": 0,
                              "installedCount": 0, "quarantined": {}, "cancelledBy": "rollout", "skipped": True,
                              "rolloutId": rollout_id}, execution_id)
