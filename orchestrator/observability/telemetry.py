"""What the engine tells the world as it works: each step (duration, command, outcome, its log context and
span), each batch round's steps, each tick; and the metering decorators of the Fleet and Mailer ports that
the composition root applies once (`Telemetry.fleet`, `Telemetry.mailer`), so no driver is edited.

`NULL_TELEMETRY` does nothing (PATCHAAS_METRICS_ENABLED=false, and any engine built without one): the
benchmarks' off switch (docs/BENCHMARKS.md, "Cost of observability").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.domain import machine
from orchestrator.observability import context, metrics, tracing
from orchestrator.ports import FleetError, FleetRefused

log = logging.getLogger("orchestrator.engine.steps")
perf = time.perf_counter
OPERATIONS = ("status", "set_maintenance", "power_on", "power_off", "reboot", "invoke_package", "cycle_result",
              "settled", "statuses", "cycle_results")  # the Fleet port, and its optional bulk reads


class _Children:
    """Labelled children of a metric, looked up once each (prometheus-client's `labels` takes a lock)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.found: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.found.get(labels)
        if child is None:
            child = self.found[labels] = self.metric.labels(*labels)
        return child


def _outcome(result: Any, command: Any, event: Any) -> str:
    value = getattr(result, "value", result)
    if value in ("retrying", "conflict"):
        return str(value)
    if isinstance(event, machine.Abandoned) and not isinstance(command, machine.Abandon):
        return "refused"
    return "ok"


def _reaped(command: Any, outcome: str) -> bool:
    """The run was failed after too many attempts (the only Abandon that fails: machine.command_for)."""
    return outcome == "ok" and isinstance(command, machine.Abandon) and command.outcome is machine.Outcome.FAILED


class StepWatch:
    """One step of `Stepper.advance`: `begin` once the command is known; the outcome on the way out."""

    __slots__ = ("telemetry", "started", "view", "command", "command_object", "event", "result", "_token", "_span")

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.view: Any = None
        self.command = ""
        self.command_object: Any = None
        self.event: Any = None
        self.result: Any = None
        self._token: Any = None
        self._span: Any = None

    def __enter__(self) -> StepWatch:
        self.started = perf()
        return self

    def begin(self, view: machine.ExecutionView, command: Any) -> None:
        self.view, self.command_object = view, command
        self.command = context.snake(type(command).__name__)
        self._token = context.enter(self)
        if tracing.enabled():
            first = view.state is machine.State.REQUESTED
            self._span = tracing.span(f"step {self.command}", {"patchaas.state": view.state.value,
                                                               "patchaas.step": self.command},
                                      parent=getattr(view, "trace_parent", None) if first else None)
            self._span.__enter__()

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if self.view is None:
            return  # not due, leased elsewhere or finished: no step was taken
        try:
            outcome = "error" if error is not None else _outcome(self.result, self.command_object, self.event)
            self.telemetry.record_step(self.command, outcome, perf() - self.started,
                                       _reaped(self.command_object, outcome))
        finally:
            if self._span is not None:
                self._span.__exit__(kind, error, tb)
            context.leave(self._token)


class _NullWatch:
    __slots__ = ("result", "event")

    def __enter__(self) -> _NullWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def begin(self, view: Any, command: Any) -> None:
        return None


class NullTelemetry:
    """Observes nothing: no metrics, no log context, no spans."""

    enabled = False
    _watch = _NullWatch()

    def step(self) -> Any:
        return self._watch

    def in_step(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        return fn

    def batch_done(self, steps: Iterable[Any], saved: set[str]) -> None:
        return None

    def tick(self, seconds: float, steps: int, emails: int) -> None:
        return None

    def fleet(self, fleet: Any, driver: str) -> Any:
        return fleet

    def mailer(self, mailer: Any) -> Any:
        return mailer


NULL_TELEMETRY = NullTelemetry()


class Telemetry(NullTelemetry):
    """Prometheus metrics, log context and spans of the engine's work."""

    enabled = True

    def __init__(self) -> None:
        self._steps = _Children(metrics.STEPS)
        self._step_seconds = _Children(metrics.STEP_SECONDS)
        for command in ("inspect_server", "poll_server", "power_on", "set_maintenance", "invoke_update_package",
                        "fetch_cycle_result", "reboot_server", "power_off", "abandon"):
            for outcome in metrics.STEP_OUTCOMES:
                self._steps(command, outcome)  # every series exists from the start, at 0
        metrics.REAPER_FAILURES.inc(0)

    # --- steps --------------------------------------------------------------------------------------

    def step(self) -> StepWatch:
        return StepWatch(self)

    def record_step(self, command: str, outcome: str, seconds: float, reaped: bool = False) -> None:
        self._steps(command, outcome).inc()
        self._step_seconds(command).observe(seconds)
        if reaped:
            metrics.REAPER_FAILURES.inc()
        if log.isEnabledFor(logging.INFO):
            log.info("step %s: %s (%.0f ms)", command, outcome, seconds * 1000)

    def in_step(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """A batch round's per-step work (plan, effect) in that step's log context (and span)."""

        def run(step: Any) -> None:
            context.track(step.view.id, step)
            token = context.enter(step)
            try:
                if tracing.enabled():
                    first = step.view.state is machine.State.REQUESTED and fn.__name__ != "_act"
                    with tracing.span(f"step {fn.__name__.strip('_')}", {"patchaas.state": step.view.state.value},
                                      parent=getattr(step.view, "trace_parent", None) if first else None):
                        fn(step)
                else:
                    fn(step)
            finally:
                context.leave(token)

        return run

    def batch_done(self, steps: Iterable[Any], saved: set[str]) -> None:
        """A batch round's steps, saved or not (rounds.BatchRunner._save)."""
        now = perf()
        for s in steps:
            view = s.view
            command = context.snake(s.command) if s.command else "unknown"
            if getattr(s, "conflict", False):
                outcome = "conflict"
            elif view.id in saved:
                outcome = "refused" if isinstance(s.event, machine.Abandoned) and s.command != "Abandon" else "ok"
            elif s.error is not None or s.event is None:
                outcome = "retrying"
            else:
                outcome = "conflict"  # the compare-and-set found the row moved
            reaped = (outcome == "ok" and s.command == "Abandon" and isinstance(s.event, machine.Abandoned)
                      and s.event.outcome is machine.Outcome.FAILED)
            token = context.enter(s)
            try:
                self.record_step(command, outcome, now - getattr(s, "started", now), reaped)
            finally:
                context.leave(token)
                context.untrack(view.id)

    # --- the tick -----------------------------------------------------------------------------------

    def tick(self, seconds: float, steps: int, emails: int) -> None:
        metrics.TICK_SECONDS.observe(seconds)
        metrics.TICK_CLAIMED.observe(steps)
        if emails:
            metrics.TICK_EMAILS.inc(emails)
        metrics.TICK_LAST.set(time.time())

    # --- the ports, metered ---------------------------------------------------------------------------

    def fleet(self, fleet: Any, driver: str) -> Any:
        return MeteredFleet(fleet, driver)

    def mailer(self, mailer: Any) -> Any:
        return MeteredMailer(mailer)


class MeteredFleet:
    """A Fleet that counts and times every call of the driver it wraps (and traces it when traces are on);
    every other attribute is the driver's. The bulk reads exist only if the driver has them."""

    def __init__(self, inner: Any, driver: str) -> None:
        self._inner = inner
        self.driver = driver
        for operation in OPERATIONS:
            if getattr(inner, operation, None) is not None:
                setattr(self, operation, self._metered(operation))
        if getattr(inner, "perform_many", None) is not None:  # a round's effects in one call (engine/effects.py)
            self.perform_many = self._perform_many

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _metered(self, operation: str) -> Callable[..., Any]:
        driver, inner = self.driver, self._inner
        ok, error, refused, other = (metrics.FLEET_CALLS.labels(driver, operation, o) for o in metrics.FLEET_OUTCOMES)
        seconds = metrics.FLEET_SECONDS.labels(driver, operation)
        name = f"fleet {operation}"
        attributes = {"patchaas.driver": driver, "patchaas.operation": operation}

        def call(*args: Any, **kwargs: Any) -> Any:
            started = perf()
            try:
                with tracing.span(name, attributes, kind="client"):
                    result = getattr(inner, operation)(*args, **kwargs)  # looked up now: tests patch drivers
            except FleetRefused:
                refused.inc()
                raise
            except FleetError:
                error.inc()
                raise
            except Exception:
                other.inc()
                raise
            finally:
                seconds.observe(perf() - started)
            ok.inc()
            return result

        call.__name__ = operation
        return call

    def _perform_many(self, calls: Any) -> Any:
        """Many effects in one driver call: each counted by its own operation and outcome, the bulk call timed
        as `perform_many`."""
        calls = list(calls)
        started = perf()
        try:
            with tracing.span("fleet perform_many", {"patchaas.driver": self.driver, "patchaas.calls": len(calls)},
                              kind="client"):
                outcomes = self._inner.perform_many(calls)
        except Exception as error:
            for operation, _ in calls:
                metrics.FLEET_CALLS.labels(self.driver, str(operation), _fleet_outcome(error)).inc()
            raise
        finally:
            metrics.FLEET_SECONDS.labels(self.driver, "perform_many").observe(perf() - started)
        for (operation, _), outcome in zip(calls, outcomes, strict=False):
            metrics.FLEET_CALLS.labels(self.driver, str(operation), _fleet_outcome(outcome)).inc()
        return outcomes


def _fleet_outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, FleetRefused):
        return "refused"
    return "error" if isinstance(error, FleetError) else "exception"


class MeteredMailer:
    """A Mailer that counts and times every email it hands to SMTP (and traces it); `session` (one SMTP
    connection for a batch) only if the wrapped mailer has one."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        if hasattr(inner, "session"):
            self.session = self._session

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def send(self, message: Any) -> None:
        _sent(self._inner.send, message)

    @contextmanager
    def _session(self) -> Iterator[Callable[[Any], None]]:
        with self._inner.session() as send:
            yield lambda message: _sent(send, message)


def _sent(send: Callable[[Any], None], message: Any) -> None:
    started = perf()
    try:
        with tracing.span("smtp send", {"patchaas.email_kind": str(message.get("X-Patchaas-Kind", ""))},
                          kind="client"):
            send(message)
    except Exception:
        metrics.EMAILS.labels("failed").inc()
        raise
    finally:
        metrics.SMTP_SECONDS.observe(perf() - started)
    metrics.EMAILS.labels("sent").inc()


def for_settings(enabled: bool) -> NullTelemetry:
    """The engine's telemetry: on (PATCHAAS_METRICS_ENABLED, the default) or `NULL_TELEMETRY`."""
    return Telemetry() if enabled else NULL_TELEMETRY
