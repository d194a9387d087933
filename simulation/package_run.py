"""One cycle of the simulated update package, as windows-update.ps1 runs it on a real server: search, select
(the run's selection and exclusions), the checks before Install() (a pending reboot, a busy installer, the
install lock), exclusive updates alone, install, and the report with the markers of issue 12 (`blocked_by`,
`remaining`, `search_result_code`, `search_warnings`, `error`). The fleet (fleet.py) keeps the report under the
run's key and records the installs; the server's scenario (specs.Scenario) decides which real-world behaviour
this server shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from orchestrator.domain.cycles import HRESULT_INSTALL_NOT_ALLOWED, HRESULT_OPERATION_IN_PROGRESS
from schemas import selection
from schemas.fleet import BlockedBy, CycleReport, CycleState, PackageRun, ResultCode, UpdateResult
from simulation.catalog import CatalogUpdate, Classification
from simulation.server_state import ServerState, install, scanned, search
from simulation.specs import Scenario, SimServerSpec

HRESULT_ALL_FAILED = 0x80240022  # WU_E_ALL_UPDATES_FAILED: the batch HRESULT when nothing installed
HRESULT_SEARCH_UNREACHABLE = 0x8024402C  # WU_E_PT_WINHTTP_NAME_NOT_RESOLVED: the update service is not reachable
HRESULT_SEARCH_PARTIAL = 0x80244022  # WU_E_PT_HTTP_STATUS_SERVICE_UNAVAIL: one service of the search did not answer
HRESULT_TASK_DIED = 0x80004005  # E_FAIL: the dead task's last result, as the outer run reports it
DEFAULT_HEARTBEAT_SECONDS = 300  # the package's own default (patchaas.heartbeatSeconds not sent)
LONG_CYCLE_FACTOR = 1.5  # LONG_CYCLE: its first installing cycle lasts this many times the time to the deadline
BUSY_CYCLES = (BlockedBy.INSTALLER_BUSY, BlockedBy.ANOTHER_RUN)  # INSTALLER_BUSY: its first installing cycles
DIED = ("the update task ended without a result (last task result 0x80004005): stopped at its time limit, "
        "killed, or its log could not be written")


@dataclass
class CycleRun:
    """What one invocation did: its final report, when the cycle ends, the KBs installed (effects to record),
    and how often it sends heartbeats meanwhile."""

    report: CycleReport
    finish_at: float
    installed: list[str] = field(default_factory=list)
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    phase: str = "searching"


def at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def run_cycle(spec: SimServerSpec, state: ServerState, run: PackageRun, key: str, now: float,
              package_seconds: float) -> CycleRun:
    """Run one cycle on `spec` in `state` (changed in place) at `now`."""
    wanted = selection.selection_of(run.parameters)
    beat = DEFAULT_HEARTBEAT_SECONDS if run.heartbeat_seconds is None else run.heartbeat_seconds
    base = dict(key=key, state=CycleState.FINISHED, started_at=at(now), finished_at=at(now + package_seconds))
    state.searches += 1
    offered = search(spec, state)
    search_code, warnings = ResultCode.SUCCEEDED, ()
    if spec.scenario is Scenario.PARTIAL_SEARCH and state.searches == 1:  # no list at all: the cycle failed
        report = CycleReport(**base, result_code=ResultCode.FAILED, hresult=HRESULT_SEARCH_UNREACHABLE,
                             search_result_code=ResultCode.FAILED, error="the update search failed",
                             search_warnings=("0x8024402C: the update service could not be reached (context 1)",))
        return CycleRun(report, now + package_seconds, heartbeat_seconds=beat)
    if spec.scenario is Scenario.PARTIAL_SEARCH and state.searches == 2 and len(offered) > 1:
        offered = offered[: len(offered) // 2]  # a partial list: what was found is installed, the rest found later
        search_code = ResultCode.SUCCEEDED_WITH_ERRORS
        warnings = ("0x80244022: one update service did not answer; the list is partial (context 1)",)
    skip = set(run.exclude_kbs)
    excluded = tuple(u.kb for u in offered if u.kb in skip or not wanted.admits(
        u.kb, str(u.classification), at(u.released_at(state.epoch)), u.msrc_severity, at(now)))
    chosen = [u for u in offered if u.kb not in excluded]
    marks = dict(search_result_code=search_code, search_warnings=warnings, excluded=excluded)
    if wanted.scan_only:  # report what would be installed, change nothing
        report = CycleReport(**base, **marks, updates=tuple(scanned(u) for u in chosen),
                             result_code=ResultCode.NOT_STARTED, reboot_required=state.pending_reboot)
        return CycleRun(report, now + package_seconds, heartbeat_seconds=beat)
    if chosen:
        state.runs += 1
    blocked = _blocker(spec, state) if chosen else None
    remaining = tuple(u.kb for u in chosen)
    if blocked is BlockedBy.REBOOT_PENDING:
        report = CycleReport(**base, **marks, result_code=ResultCode.NOT_STARTED, hresult=HRESULT_INSTALL_NOT_ALLOWED,
                             reboot_required=True, blocked_by=blocked, remaining=remaining)
        return CycleRun(report, now + package_seconds, heartbeat_seconds=beat)
    if blocked in BUSY_CYCLES:
        hresult = HRESULT_OPERATION_IN_PROGRESS if blocked is BlockedBy.INSTALLER_BUSY else 0
        report = CycleReport(**base, **marks, result_code=ResultCode.ABORTED, hresult=hresult,
                             reboot_required=state.pending_reboot, blocked_by=blocked, remaining=remaining)
        return CycleRun(report, now + package_seconds, heartbeat_seconds=beat)
    if spec.scenario is Scenario.PACKAGE_DIES and state.runs == 1 and chosen:
        # the SYSTEM task died before it saved a result: the outer run's own failure report (New-FailureReport)
        report = CycleReport(**base, **marks, result_code=ResultCode.FAILED, hresult=HRESULT_TASK_DIED,
                             reboot_required=state.pending_reboot, remaining=remaining, error=DIED)
        return CycleRun(report, now + package_seconds, heartbeat_seconds=beat)
    queue, left = _queue(spec, chosen)
    results = [install(spec, state, update) for update in queue]
    report = CycleReport(**base, **marks, updates=tuple(results), remaining=tuple(u.kb for u in left),
                         **_outcome(results, search_code), reboot_required=state.pending_reboot)
    finish_at = now + package_seconds
    if spec.scenario is Scenario.LONG_CYCLE and state.runs == 1 and run.deadline is not None:
        finish_at = now + LONG_CYCLE_FACTOR * max(package_seconds, run.deadline.timestamp() - now)
        report = report.model_copy(update={"finished_at": at(finish_at)})
    phase = f"installing {', '.join(u.kb for u in queue[:3])}" if queue else "searching"
    return CycleRun(report, finish_at, [u.kb for u in queue], beat, phase)


def _blocker(spec: SimServerSpec, state: ServerState) -> BlockedBy | None:
    """What the checks before Install() find on this server now."""
    if state.hidden_pending or state.pending_flag:
        return BlockedBy.REBOOT_PENDING
    if spec.scenario is Scenario.INSTALLER_BUSY and state.runs <= len(BUSY_CYCLES):
        return BUSY_CYCLES[state.runs - 1]
    return None


def _queue(spec: SimServerSpec, chosen: list[CatalogUpdate]) -> tuple[list[CatalogUpdate], list[CatalogUpdate]]:
    """What one installer call gets, and what is left for the next cycle: an update that needs exclusive handling
    goes alone (EXCLUSIVE_UPDATE: the servicing stack updates), else everything."""
    if spec.scenario is Scenario.EXCLUSIVE_UPDATE:
        exclusive = [u for u in chosen if u.classification is Classification.SERVICING_STACK]
        if exclusive:
            return [exclusive[0]], [u for u in chosen if u is not exclusive[0]]
    return chosen, []


def _outcome(results: list[UpdateResult], search_code: ResultCode) -> dict[str, object]:
    """The batch's result code and HRESULT; a partial search makes it at best 3 (SucceededWithErrors)."""
    failed = sum(1 for result in results if result.result_code == ResultCode.FAILED)
    if results and failed == len(results):
        return {"result_code": ResultCode.FAILED, "hresult": HRESULT_ALL_FAILED}
    if failed or search_code is ResultCode.SUCCEEDED_WITH_ERRORS:
        return {"result_code": ResultCode.SUCCEEDED_WITH_ERRORS, "hresult": 0}
    return {"result_code": ResultCode.SUCCEEDED, "hresult": 0}
