"""One step of one execution: claim, decide the command, act once on the fleet, decide, save.

This is the only place that turns the pure state machine into effects. Entry points (Celery tasks,
the embedded runner, tests) call `Engine.advance(execution_id)` and `Engine.tick()`; they decide nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from orchestrator import batch, executions, machine, notifications
from orchestrator.fleet import Fleet, FleetError, FleetRefused
from schemas.fleet import PackageRun, PowerState

log = logging.getLogger(__name__)
T = TypeVar("T")


class Dispatcher(Protocol):
    """Hands ids to workers (Celery in production; a list in unit tests)."""

    def advance(self, execution_id: str, delay: float) -> None: ...

    def deliver(self, outbox_id: int) -> None: ...


class Hooks(Protocol):
    """Points between intent, effect and commit where chaos tests crash a worker on purpose."""

    def reached(self, point: str, execution_id: str, step: str) -> None: ...


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


@dataclass(frozen=True)
class EngineConfig:
    """The engine's timings (from Settings)."""

    lease: timedelta = timedelta(minutes=5)
    redrive: timedelta = timedelta(seconds=30)
    short_countdown: timedelta = timedelta(seconds=5)
    retry_backoff: timedelta = timedelta(seconds=2)
    max_backoff: timedelta = timedelta(minutes=5)
    tick_batch: int = 500
    email_hold: timedelta = timedelta(minutes=2)
    early: timedelta = timedelta(milliseconds=250)
    db_retry: timedelta = timedelta(seconds=20)  # a transaction retries a database blip this long
    # batches and timers (orchestrator/batch.py); PATCHAAS_BATCH_* and PATCHAAS_TICK_* in Settings
    batch_size: int = batch.DEFAULT_SIZE  # executions per batch message at most
    batch_spread: int = batch.DEFAULT_SPREAD  # an immediate hand-off goes in at least this many messages
    batch_budget: timedelta = timedelta(seconds=2)  # a batch stops chaining after this long
    batch_max_rounds: int = 200
    batch_fleet_threads: int = 8
    tick_lookahead: timedelta | None = None  # the tick sends timers due within this (None: short_countdown)
    tick_max_rounds: int = batch.MAX_TICK_ROUNDS  # a tick claims `tick_batch` rows at most this many times


def compute_backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff for the `attempts`th failure of a step, capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


def is_db_blip(error: BaseException) -> bool:
    """A database error that a retry can outlive: connection refused or cut, server restarting,
    serialization failure or deadlock (all OperationalError), a connection already closed (InterfaceError)."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


class _EffectFailed(Exception):
    """The effect's call failed after its intent was committed: `view` carries the version that intent
    wrote, so the step can be released (or failed) from the version the database really holds."""

    def __init__(self, view: machine.ExecutionView, error: Exception) -> None:
        super().__init__(str(error))
        self.view = view
        self.error = error


class Engine:
    """Advances executions one durable step at a time."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        fleet: Fleet,
        dispatcher: Dispatcher,
        policy: machine.Policy,
        config: EngineConfig,
        mailer: notifications.Mailer,
        mail_from: str,
        clock: Callable[[], datetime],
        hooks: Hooks | None = None,
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
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # --- one step -----------------------------------------------------------------------------

    def advance(self, execution_id: str) -> StepResult:
        """Run the current step of `execution_id` if it is due and free."""
        now = self.clock()

        def claim(session: Session) -> tuple[machine.ExecutionView, dict[str, Any] | None] | None:
            row = executions.claim(session, execution_id, self.owner, now, self.config.lease, self.config.early)
            if row is None:
                return None
            return executions.to_view(row), (dict(row.intent) if row.intent else None)

        claimed = self._tx(claim)
        if claimed is None:
            return StepResult.NOT_DUE
        view, intent = claimed
        command = machine.command_for(view, now, self.policy)
        try:
            event, view = self._perform(command, view, intent)
        except _EffectFailed as failed:  # the intent moved the version: release from the new one
            view, error = failed.view, failed.error
            if not isinstance(error, FleetRefused):
                return self._retry_later(view, f"{type(command).__name__}: {_describe(error)}", error)
            event = machine.Abandoned(machine.Outcome.FAILED, str(error))
        except FleetRefused as refused:
            event = machine.Abandoned(machine.Outcome.FAILED, str(refused))
        except Exception as error:  # FleetError, or anything a driver raises: back off, never hold the lease
            return self._retry_later(view, f"{type(command).__name__}: {_describe(error)}", error)
        if view.version == 0:
            return StepResult.CONFLICT
        return self._save(view, event)

    def _tx(self, work: Callable[[Session], T]) -> T:
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
            outbox_ids: list[int] = []
            for kind in decision.emails:
                row = session.get(executions.models.Execution, view.id, populate_existing=True)
                if row is not None:
                    queued = notifications.enqueue(session, row, kind, now, self.config.redrive)
                    if queued is not None:
                        outbox_ids.append(queued.id)
            return outbox_ids

        outbox_ids = self._tx(save)
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
        released = self._tx(lambda session: executions.release(session, view, self.owner, error, retry_at, now))
        return StepResult.RETRYING if released else StepResult.CONFLICT

    def _record_intent(self, view: machine.ExecutionView, intent: dict[str, Any]) -> machine.ExecutionView:
        version = self._tx(lambda session: executions.record_intent(session, view, self.owner, intent))
        self.hooks.reached("after_intent", view.id, view.state.value)
        return dataclasses.replace(view, version=version)

    def _perform(
        self, command: machine.Command, view: machine.ExecutionView, intent: dict[str, Any] | None
    ) -> tuple[machine.Event, machine.ExecutionView]:
        """Do the command's one effect (checking the far side first) and say what happened."""
        fleet, server = self.fleet, view.server
        match command:
            case machine.Abandon(outcome=outcome, reason=reason):
                return machine.Abandoned(outcome, reason), view
            case machine.InspectServer() | machine.PollServer():
                return machine.ServerInspected(fleet.status(server)), view
            case machine.PowerOn(key=key):
                if fleet.status(server).power_state is not PowerState.STARTED:
                    view = self._effect(view, key, lambda: fleet.power_on(server, key))
                return machine.PowerOnRequested(), view
            case machine.SetMaintenance(on=on, key=key):
                if fleet.status(server).in_maintenance is not on:
                    view = self._effect(view, key, lambda: fleet.set_maintenance(server, on, key))
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
                        parameters=dict(view.parameters),
                    )
                    view = self._effect(view, key, lambda: fleet.invoke_package(server, key, run))
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
                view = self._effect(
                    view, key, lambda: fleet.reboot(server, key), {"key": key, "boot_id_before": before}
                )
                return machine.RebootRequested(before), view
            case machine.PowerOff(key=key):
                if fleet.status(server).power_state is not PowerState.STOPPED:
                    view = self._effect(view, key, lambda: fleet.power_off(server, key))
                return machine.PowerOffRequested(), view
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
            raise _EffectFailed(view, error) from error
        self.hooks.reached("after_effect", view.id, view.state.value)
        return view

    # --- the tick -----------------------------------------------------------------------------

    def tick(self) -> tuple[int, int]:
        """Claim due executions and unsent emails and hand them to the dispatcher; (steps, emails)."""
        now = self.clock()
        steps = batch.dispatch_due(self, now)  # due and soon-due rows, with countdowns (orchestrator/batch.py)
        emails = self._tx(
            lambda session: notifications.claim_unsent(session, now, self.config.redrive, self.config.tick_batch)
        )
        batch.hand_off_emails(self.dispatcher, emails)  # batch messages when the dispatcher sends them
        return steps, len(emails)

    # --- emails -------------------------------------------------------------------------------

    def deliver(self, outbox_id: int) -> notifications.Delivery:
        """Send one outbox row if nobody else is sending it; mark it sent, or schedule a retry."""
        now = self.clock()

        def claim(session: Session) -> tuple[Any, int] | None:
            row = notifications.claim(session, outbox_id, now, self.config.email_hold)
            return None if row is None else (notifications.build_message(row, self.mail_from), row.attempts)

        claimed = self._tx(claim)
        if claimed is None:
            return notifications.Delivery(outbox_id, sent=False, error="already sent or being sent")
        message, attempts = claimed
        error: str | None = None
        try:
            self.mailer.send(message)
        except Exception as exc:  # any SMTP or socket failure: the row stays queued
            error = f"{type(exc).__name__}: {exc}"
            log.warning("email %s not sent (attempt %d): %s", outbox_id, attempts, error)
        self.hooks.reached("after_email", str(outbox_id), "deliver")
        retry_in = compute_backoff(attempts, self.config.retry_backoff, self.config.max_backoff)
        # sent but not marked would send it again after the hold: ride out a database blip here
        self._tx(lambda session: notifications.mark(session, outbox_id, self.clock(), error, retry_in))
        return notifications.Delivery(outbox_id, sent=error is None, error=error)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if isinstance(error, FleetError) and text else f"{type(error).__name__}: {text[0] if text else ''}"


def _log_db_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    first = str(getattr(error, "orig", error)).strip().splitlines()
    log.warning("database unreachable (%s); retrying the transaction in %.1fs (attempt %d)",
                first[0] if first else type(error).__name__, state.upcoming_sleep, state.attempt_number)
