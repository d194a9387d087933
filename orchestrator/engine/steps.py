"""One step of one execution: claim, decide the command, act once on the fleet, decide, save.

This is the only place that turns the pure state machine into effects. Entry points (Celery tasks,
the embedded runner, tests) call `Engine.advance(execution_id)` and `Engine.tick()` (engine.py); they decide
nothing. Batches (rounds.py) run the same `perform` for many executions at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from orchestrator import ports
from orchestrator.domain import machine
from orchestrator.engine import event_log, executions, health_runs, hook_runs, notifications
from orchestrator.engine.config import EngineConfig, compute_backoff
from orchestrator.observability.telemetry import NULL_TELEMETRY, NullTelemetry
from orchestrator.ports import Dispatcher, Fleet, FleetError, FleetRefused, Hooks
from schemas import selection
from schemas.fleet import PackageRun, PowerState

log = logging.getLogger(__name__)
T = TypeVar("T")
Effect = Callable[..., machine.ExecutionView]  # (view, key, act, intent=None) -> the view after the intent


class NoHooks:
    """Production: nothing happens at the hook points."""

    def reached(self, point: str, execution_id: str, step: str) -> None:
        return None


class StepResult(StrEnum):
    """What `advance` did."""

    NOT_DUE = "not_due"  # not due, leased by another worker, or already finished: nothing done
    ADVANCED = "advanced"  # a transition (or a wait) was saved
    RETRYING = "retrying"  # the fleet failed transiently; the step runs again later
    CONFLICT = "conflict"  # someone else moved the execution between our read and our save


def is_db_blip(error: BaseException) -> bool:
    """A database error that a retry can outlive: connection refused or cut, server restarting,
    serialization failure or deadlock (all OperationalError), a connection already closed (InterfaceError)."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


class EffectFailed(Exception):
    """The effect's call failed after its intent was committed: `view` carries the version that intent
    wrote, so the step can be released (or failed) from the version the database really holds."""

    def __init__(self, view: machine.ExecutionView, error: Exception) -> None:
        super().__init__(str(error))
        self.view = view
        self.error = error


class Stepper:
    """Advances executions one durable step at a time (the tick and the outbox sit on top: engine.py)."""

    hook_caller: ports.HttpCaller | None = None  # HTTP hooks (engine/hook_runs.py), wired by bootstrap.build
    hook_keys: str | None = None  # PATCHAAS_WEBHOOK_KEY: opens the hooks' sealed secret headers
    health_prober: ports.HealthProber | None = None  # HTTP and TCP health checks (engine/health_runs.py)

    def __init__(
        self,
        sessions: sessionmaker[Session],
        fleet: Fleet,
        dispatcher: Dispatcher,
        policy: machine.Policy,
        config: EngineConfig,
        mailer: ports.Mailer,
        mail_from: str,
        clock: Callable[[], datetime],
        hooks: Hooks | None = None,
        telemetry: NullTelemetry | None = None,
    ) -> None:
        self.sessions = sessions
        self.fleet = fleet
        self.dispatcher = dispatcher
        self.policy = policy
        self.config = config
        self.mailer = mailer
        self.mail_from = mail_from
        self.clock = clock
        self.hooks = hooks or NoHooks()
        self.telemetry = telemetry or NULL_TELEMETRY  # metrics, log context, spans (orchestrator/observability)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # --- one step -----------------------------------------------------------------------------

    def advance(self, execution_id: str) -> StepResult:
        """Run the current step of `execution_id` if it is due and free."""
        with self.telemetry.step() as watch:  # its duration, outcome, log context and span
            result = watch.result = self._advance(execution_id, watch)
            return result

    def _advance(self, execution_id: str, watch: Any) -> StepResult:
        now = self.clock()

        def claim(session: Session) -> tuple[machine.ExecutionView, dict[str, Any] | None] | None:
            row = executions.claim(session, execution_id, self.owner, now, self.config.lease, self.config.early)
            if row is None:
                return None
            view = hook_runs.with_plans(session, [executions.to_view(row)])[0]  # the first step fixes the hook plan
            return view, (dict(row.intent) if row.intent else None)

        claimed = self.transaction(claim)
        if claimed is None:
            return StepResult.NOT_DUE
        view, intent = claimed
        command = machine.command_for(view, now, self.policy)
        watch.begin(view, command)
        try:
            event, view = self.perform(command, view, intent)
        except EffectFailed as failed:  # the intent moved the version: release from the new one
            view, error = failed.view, failed.error
            if not isinstance(error, FleetRefused):
                return self._retry_later(view, f"{type(command).__name__}: {describe_error(error)}", error)
            event = machine.Abandoned(machine.Outcome.FAILED, str(error))
        except FleetRefused as refused:
            event = machine.Abandoned(machine.Outcome.FAILED, str(refused))
        except Exception as error:  # FleetError, or anything a driver raises: back off, never hold the lease
            return self._retry_later(view, f"{type(command).__name__}: {describe_error(error)}", error)
        if view.version == 0:
            return StepResult.CONFLICT
        watch.event = event
        return self._save(view, event)

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one transaction, again while the database blips (a restart, a failover) for up
        to `db_retry` (at most half the lease). Safe to repeat: every write is a compare-and-set, so a
        transaction that did commit before the connection dropped makes its repeat a no-op."""
        budget = min(self.config.db_retry, self.config.lease / 2).total_seconds()
        for attempt in Retrying(
            retry=retry_if_exception(is_db_blip),
            stop=stop_after_delay(budget),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2),
            before_sleep=_log_db_retry,
            reraise=True,
        ):
            with attempt, self.sessions.begin() as session:
                return work(session)
        raise AssertionError("unreachable")  # pragma: no cover

    def _save(self, view: machine.ExecutionView, event: machine.Event) -> StepResult:
        now = self.clock()
        decision = machine.decide(view, event, now, self.policy)
        due = decision.next_run_at
        soon = due is not None and due - now <= self.config.short_countdown
        dispatched_until = due + self.config.redrive if soon and due is not None else None

        def save(session: Session) -> list[int] | None:
            if not executions.save(session, view, decision, self.owner, now, dispatched_until):
                return None
            event_log.record_transition(session, view, decision, now)  # the events it implies (webhooks)
            outbox_ids: list[int] = []
            for kind in decision.emails:
                row = session.get(executions.models.Execution, view.id, populate_existing=True)
                if row is not None:
                    queued = notifications.enqueue(session, row, kind, now, self.config.redrive)
                    if queued is not None:
                        outbox_ids.append(queued.id)
            return outbox_ids

        outbox_ids = self.transaction(save)
        if outbox_ids is None:
            log.info("execution %s moved under us; dropping our step", view.id)
            return StepResult.CONFLICT
        self.hooks.reached("after_commit", view.id, view.state.value)
        for outbox_id in outbox_ids:
            self.dispatcher.deliver(outbox_id)
        if soon and due is not None:
            self.dispatcher.advance(view.id, max(0.0, (due - now).total_seconds()))
        return StepResult.ADVANCED

    def _retry_later(self, view: machine.ExecutionView, error: str, cause: Exception | None = None) -> StepResult:
        now = self.clock()
        retry_at = now + compute_backoff(view.attempts, self.config.retry_backoff, self.config.max_backoff)
        expected = cause is None or isinstance(cause, FleetError)
        log.log(logging.WARNING if expected else logging.ERROR, "execution %s: %s (attempt %d); retrying at %s",
                view.id, error, view.attempts, retry_at, exc_info=None if expected else cause)
        released = self.transaction(lambda session: executions.release(session, view, self.owner, error, retry_at, now))
        return StepResult.RETRYING if released else StepResult.CONFLICT

    def _record_intent(self, view: machine.ExecutionView, intent: dict[str, Any]) -> machine.ExecutionView:
        version = self.transaction(lambda session: executions.record_intent(session, view, self.owner, intent))
        self.hooks.reached("after_intent", view.id, view.state.value)
        return dataclasses.replace(view, version=version)

    def perform(
        self,
        command: machine.Command,
        view: machine.ExecutionView,
        intent: dict[str, Any] | None,
        *,
        fleet: Fleet | None = None,
        effect: Effect | None = None,
    ) -> tuple[machine.Event, machine.ExecutionView]:
        """Do the command's one effect (checking the far side first) and say what happened. A batch round
        passes the fleet reads it made in bulk (`fleet`) and an `effect` that holds the intent-and-effect
        pair back until all the round's intents are committed (rounds.py)."""
        fleet = fleet if fleet is not None else self.fleet
        effect = effect if effect is not None else self._effect
        server = view.server
        match command:
            case machine.Abandon(outcome=outcome, reason=reason):
                return machine.Abandoned(outcome, reason), view
            case machine.InspectServer() | machine.PollServer():
                return machine.ServerInspected(fleet.status(server)), view
            case machine.CheckSettled():
                settled = getattr(fleet, "settled", None)  # a driver from before issue 14: the boot id only
                found = settled(server) if settled is not None else ports.settled_by_status(fleet.status(server))
                return machine.SettleChecked(found), view
            case machine.PowerOn(key=key):
                if fleet.status(server).power_state is not PowerState.STARTED:
                    view = effect(view, key, lambda: fleet.power_on(server, key))
                return machine.PowerOnRequested(), view
            case machine.SetMaintenance(on=on, key=key):
                if fleet.status(server).in_maintenance is not on:
                    view = effect(view, key, lambda: fleet.set_maintenance(server, on, key))
                return machine.MaintenanceSet(on), view
            case machine.InvokeUpdatePackage(cycle=cycle, key=key, exclude_kbs=exclude):
                # Intent before effect: without a recorded intent for this key the package was never sent,
                # so the server cannot know the run; only a retry after the intent asks it first.
                attempted = intent is not None and intent.get("key") == key
                if not attempted or fleet.cycle_result(server, key) is None:
                    run = PackageRun(
                        package_id=view.package_id,
                        execution_id=view.id,
                        cycle=cycle,
                        exclude_kbs=exclude,
                        parameters={k: v for k, v in view.parameters.items() if k not in selection.RUN_OPTIONS},
                        deadline=command.deadline,  # when we stop waiting: the package plans its installs by it
                        heartbeat_seconds=command.heartbeat_seconds,
                    )
                    view = effect(view, key, lambda: fleet.invoke_package(server, key, run))
                return machine.PackageInvoked(), view
            case machine.FetchCycleResult(key=key):
                report = fleet.cycle_result(server, key)
                if report is None:
                    raise FleetError(f"the server has no record of the package run {key}")
                return machine.CycleReported(report), view
            case machine.RebootServer(key=key):
                status = fleet.status(server)
                if intent is not None and intent.get("key") == key:
                    before = str(intent["boot_id_before"])
                    if status.boot_id != before or not status.up:
                        return machine.RebootRequested(before), view  # done before we crashed
                else:
                    before = status.boot_id
                view = effect(
                    view, key, lambda: fleet.reboot(server, key), {"key": key, "boot_id_before": before}
                )
                return machine.RebootRequested(before), view
            case machine.PowerOff(key=key):
                if fleet.status(server).power_state is not PowerState.STOPPED:
                    view = effect(view, key, lambda: fleet.power_off(server, key))
                return machine.PowerOffRequested(), view
            case machine.RunHealthChecks():  # one attempt of each check due, intents first (health_runs.py)
                return health_runs.run(self, view, command, fleet), view
            case machine.RunHooks():  # one hook per step, its intent in hook_runs before the call (hook_runs.py)
                return hook_runs.run_next(self, view, command, fleet), view
        raise machine.TransitionError(f"unknown command {command!r}")  # pragma: no cover

    def _effect(
        self,
        view: machine.ExecutionView,
        key: str,
        act: Callable[[], None],
        intent: dict[str, Any] | None = None,
    ) -> machine.ExecutionView:
        """Intent, effect, hook: the two crash windows are reachable by name."""
        view = self._record_intent(view, intent or {"key": key})
        if view.version == 0:
            return view
        try:
            act()
        except Exception as error:
            raise EffectFailed(view, error) from error
        self.hooks.reached("after_effect", view.id, view.state.value)
        return view


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if isinstance(error, FleetError) and text else f"{type(error).__name__}: {text[0] if text else ''}"


def _log_db_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    first = str(getattr(error, "orig", error)).strip().splitlines()
    log.warning("database unreachable (%s); retrying the transaction in %.1fs (attempt %d)",
                first[0] if first else type(error).__name__, state.upcoming_sleep, state.attempt_number)
