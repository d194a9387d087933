"""The execution as the state machine sees it: its states and outcomes, the policy it runs under, and
the view of its row that every decision reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from schemas.fleet import PowerState
from schemas.selection import PatchSelection, selection_of


class State(StrEnum):
    """Where an execution is. Waiting states carry a deadline; terminal states never change."""

    REQUESTED = "requested"  # accepted and persisted; nothing done to the server yet
    POWERING_ON = "powering_on"  # the server was stopped: ask the control plane to start it
    AWAITING_POWER = "awaiting_power"  # waiting for the powered-on server to boot
    ENTERING_MAINTENANCE = "entering_maintenance"  # turn maintenance mode on (alerts off)
    CHECKING_PENDING_REBOOT = "checking_pending_reboot"  # a reboot pending from before us is done first
    INVOKING_PACKAGE = "invoking_package"  # start cycle N of the update package (search + install)
    AWAITING_RESULT = "awaiting_result"  # the package runs on the server; poll its report
    REBOOTING = "rebooting"  # the cycle (or the pre-check) needs a reboot: ask for it
    AWAITING_BOOT = "awaiting_boot"  # waiting for the server to come back with a new boot id
    SETTLING = "settling"  # back with a new boot id: waiting until its servicing stack stays idle (settle period)
    CHECKING_HEALTH = "checking_health"  # the run's health checks of one phase, retried, then on (health_points.py)
    EXITING_MAINTENANCE = "exiting_maintenance"  # cleanup, every path: maintenance mode off
    RESTORING_POWER = "restoring_power"  # cleanup: the server was stopped before us: stop it again
    RUNNING_HOOKS = "running_hooks"  # the account's hooks of one point run, one per step, then on (hook_points.py)
    COMPLETED = "completed"  # terminal: fully patched, nothing left to install
    FAILED = "failed"  # terminal: with a reason (deadline, quarantined KBs, loop, no convergence…)
    CANCELLED = "cancelled"  # terminal: an operator cancelled; who and why are recorded


class Outcome(StrEnum):
    """How a run ends; chosen when it enters cleanup, applied when cleanup is done."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[State] = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
CLEANUP: frozenset[State] = frozenset({State.EXITING_MAINTENANCE, State.RESTORING_POWER})
WAITING: frozenset[State] = frozenset({State.AWAITING_POWER, State.AWAITING_RESULT, State.AWAITING_BOOT,
                                       State.SETTLING})
TERMINAL_OF: Mapping[Outcome, State] = {
    Outcome.COMPLETED: State.COMPLETED,
    Outcome.FAILED: State.FAILED,
    Outcome.CANCELLED: State.CANCELLED,
}


@dataclass(frozen=True)
class Policy:
    """The guards of one execution; defaults are the product's, every one is a setting."""

    max_cycles: int = 10
    reboot_timeout: timedelta = timedelta(minutes=20)
    package_timeout: timedelta = timedelta(minutes=60)
    power_timeout: timedelta = timedelta(minutes=20)
    poll_interval: timedelta = timedelta(seconds=30)
    max_attempts: int = 5
    max_kb_failures: int = 2
    # issue 12: heartbeats, the hard ceiling of a cycle, and cycles blocked before installing
    heartbeat_seconds: int = 300  # sent to the package (patchaas.heartbeatSeconds); 0: it sends none
    heartbeat_grace: timedelta = timedelta(minutes=15)  # each heartbeat pushes the cycle's deadline to then + this
    package_ceiling: timedelta = timedelta(hours=6)  # … but never past the invocation + this
    busy_retries: int = 5  # cycles that found the installer busy (or another run's lock), per run, before failing
    busy_backoff: timedelta = timedelta(minutes=2)  # the first wait before retrying such a cycle; doubles each time
    busy_backoff_max: timedelta = timedelta(minutes=30)
    max_pending_reboots: int = 3  # cycles in a row blocked by a pending reboot (each rebooted) before failing
    # issue 14: a reboot is done when the server is up with a new boot id and its servicing stack stays idle this long
    settle_period: timedelta = timedelta(seconds=60)  # (the reboot timeout bounds the whole wait, settling included)


@dataclass(frozen=True)
class ExecutionView:
    """An execution as the state machine sees it: plain values, read from its row at `version`."""

    id: str
    server: str
    state: State
    version: int = 0
    cycle: int = 0
    outcome: Outcome | None = None
    failure_reason: str | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    cancelled_by: str | None = None
    prior_power_state: PowerState | None = None
    boot_id_before: str | None = None
    reboot_reason: str | None = None
    deadline_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    kb_failures: Mapping[str, int] = field(default_factory=dict)
    installed_kbs: frozenset[str] = frozenset()
    quarantined: Mapping[str, str] = field(default_factory=dict)
    installed_count: int = 0
    package_id: str = ""
    parameters: Mapping[str, object] = field(default_factory=dict)
    not_after: datetime | None = None  # a patch window's end minus its cutoff: no new update cycle after it
    invoked_at: datetime | None = None  # when the running cycle was invoked: the heartbeat ceiling counts from it
    settled_since: datetime | None = None  # settling: since when the servicing stack has been seen idle (None: not)
    settle_boot_id: str | None = None  # settling: the boot id it was seen with (a new one restarts the period)
    health: Mapping[str, Any] | None = None  # health checks (health_points.py): the phase running, its attempts and
    #   results, where the run goes afterwards; the checks that failed at the baseline and the warnings so far
    account: str = ""  # the account alias: for log lines and traces only; no decision reads it
    trace_parent: str | None = None  # W3C traceparent of the request that queued the run (traces only)
    # issue 14 part 3 (hook_points.py): the run's hooks, fixed at its first step ({name: definition}; None before),
    # and while running_hooks: the point, the cycle it is about and the state the run goes on to afterwards
    hook_plan: Mapping[str, Mapping[str, Any]] | None = None
    hook_point: str | None = None
    hook_cycle: int | None = None
    hook_resume: State | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def selection(self) -> PatchSelection:
        """What this run may install and how it reboots (from the package parameters)."""
        return selection_of(dict(self.parameters))

    def key(self, step: str) -> str:
        """The idempotency key of this execution's `step` in the current cycle."""
        return f"{self.id}:{step}:{self.cycle}"
