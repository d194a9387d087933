"""Settled after every reboot (issue 14 part 1): a reboot is done only when the server is up with a new boot id,
its servicing stack is idle, and it stays so for the settle period (`Policy.settle_period`).

AWAITING_BOOT sees the new boot id and moves to SETTLING, keeping the reboot's deadline: the reboot timeout bounds
the whole wait, settling included. SETTLING asks the driver (`Fleet.settled`) at every poll:

- idle (and, after the final reboot, no reboot required any more): the settle period starts, or goes on; once it
  has lasted `settle_period` the reboot is done (next cycle, or the end of the updates after the final reboot);
- busy (Windows "configuring updates": a pending CBS / TrustedInstaller operation; a Linux system still
  starting), or not up: the period starts again at the next idle look;
- a boot id other than the one it settled with (Windows rebooting again while configuring): the period restarts.

Every change between busy and idle is recorded in the execution's history (`Decision.audit`), so an operator
sees "waiting for the servicing stack to settle: configuring updates". Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from orchestrator.domain.events import Decision
from orchestrator.domain.execution import ExecutionView, Outcome, Policy, State
from orchestrator.domain.transitions import FINAL_REBOOT, abandon, end_of_updates, next_cycle, span
from schemas.fleet import ServerStatus, SettleStatus

WAITING_NOTE = "waiting for the servicing stack to settle"


def back_from_reboot(view: ExecutionView, status: ServerStatus, now: datetime, policy: Policy) -> Decision:
    """The server is up with a new boot id: settle next (at once), within the reboot's deadline."""
    nxt = dataclasses.replace(view, state=State.SETTLING, boot_id_before=None, settled_since=None,
                              settle_boot_id=None)
    return Decision(nxt, now, f"server is back (boot id {status.boot_id}); {WAITING_NOTE} "
                              f"(idle for {span(policy.settle_period)})")


def busy_words(status: SettleStatus, final: bool) -> str | None:
    """Why the server is not settled now, in words; None when it is idle."""
    if not status.up:
        return "the server is not up (rebooting again?)"
    if not status.idle:
        return status.detail or "its servicing stack is busy"
    if final and status.reboot_required:
        return "a reboot is still required after the final reboot" + (f" ({status.detail})" if status.detail else "")
    return None


def settle_checked(view: ExecutionView, status: SettleStatus, now: datetime, policy: Policy) -> Decision:
    """One look at the servicing stack while settling."""
    final = view.reboot_reason == FINAL_REBOOT
    busy = busy_words(status, final)
    first = view.settle_boot_id is None
    rebooted = not first and status.boot_id != view.settle_boot_id
    was_idle = view.settled_since is not None and not rebooted
    since = None if busy is not None else (view.settled_since if was_idle else now)
    if since is not None and now - since >= policy.settle_period:
        done = dataclasses.replace(view, settled_since=None, settle_boot_id=None, reboot_reason=None)
        note = f"servicing stack idle for {span(now - since)}"
        if final:
            return end_of_updates(done, now, f"server is back from the final reboot and settled: {note}")
        return next_cycle(done, now, policy, f"server is back and settled: {note}")
    if view.deadline_at is not None and now >= view.deadline_at:
        why = busy if busy is not None or since is None else f"idle for {span(now - since)} only"
        return abandon(view, Outcome.FAILED, (
            f"server {view.server} came back after the reboot of cycle {view.cycle} but did not settle within "
            f"{span(policy.reboot_timeout)}: {why} (settle period {span(policy.settle_period)})"), now)
    nxt = dataclasses.replace(view, settled_since=since, settle_boot_id=status.boot_id)
    at = now + policy.poll_interval
    if since is not None:
        at = min(at, since + policy.settle_period)
        note = f"{WAITING_NOTE}: idle since {since:%H:%M:%S}, done at {since + policy.settle_period:%H:%M:%S}"
    else:
        note = f"{WAITING_NOTE}: {busy}"
    if rebooted:
        note = f"the server rebooted again (boot id {status.boot_id}); {note}"
    if view.deadline_at is not None:
        at = min(at, view.deadline_at)
    audit = first or rebooted or (since is not None) != was_idle
    return Decision(nxt, at, note, audit=audit)
