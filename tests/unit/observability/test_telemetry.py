"""The engine's telemetry: metered ports (every call counted by driver, operation and outcome, timed), the
step watch's outcomes (ok, retrying, refused, conflict, error; a reaper failure), batch rounds, the tick;
the off switch does nothing at all; and every metric follows Prometheus' naming, with bounded labels."""

from __future__ import annotations

from contextlib import contextmanager
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orchestrator.domain import machine
from orchestrator.observability import context, metrics, telemetry
from orchestrator.ports import FleetError, FleetRefused
from schemas.fleet import PowerState, ServerStatus


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Driver:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def status(self, server: str) -> ServerStatus:
        self.calls.append(server)
        if server == "down":
            raise FleetError("503")
        if server == "gone":
            raise FleetRefused("unknown server")
        if server == "bug":
            raise KeyError(server)
        return ServerStatus(name=server, os_type="Windows 2012 R2 Datacenter 64-bit", power_state=PowerState.STARTED,
                            up=True, in_maintenance=False, boot_id="b1", pending_reboot=False)

    def reboot(self, server: str, key: str) -> None:
        return None

    special = "the driver's own attribute"


def test_the_metered_fleet_counts_and_times_each_call_by_outcome() -> None:
    driver = Driver()
    fleet = telemetry.Telemetry().fleet(driver, "unit")
    before = {o: value("patchaas_fleet_calls_total", driver="unit", operation="status", outcome=o)
              for o in metrics.FLEET_OUTCOMES}
    timed = value("patchaas_fleet_call_duration_seconds_count", driver="unit", operation="status")
    assert fleet.status("web").name == "web"
    for server, error in (("down", FleetError), ("gone", FleetRefused), ("bug", KeyError)):
        with pytest.raises(error):
            fleet.status(server)
    after = {o: value("patchaas_fleet_calls_total", driver="unit", operation="status", outcome=o)
             for o in metrics.FLEET_OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {"ok": 1, "error": 1, "refused": 1, "exception": 1}
    assert value("patchaas_fleet_call_duration_seconds_count", driver="unit", operation="status") - timed == 4
    assert driver.calls == ["web", "down", "gone", "bug"]
    assert fleet.special == Driver.special  # everything else is the driver's
    assert getattr(fleet, "statuses", None) is None  # no bulk read the driver does not have (rounds.py asks)
    driver.status = lambda server: "patched"  # type: ignore[assignment,method-assign,return-value]
    assert fleet.status("x") == "patched"  # looked up at each call: a test's patch of the driver applies


class Mailer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[EmailMessage] = []
        self.fail = fail

    def send(self, message: EmailMessage) -> None:
        if self.fail:
            raise OSError("connection refused")
        self.sent.append(message)


class SessionMailer(Mailer):
    @contextmanager
    def session(self) -> Any:
        yield self.send


def test_the_metered_mailer_counts_emails_and_keeps_the_session_only_if_there_is_one() -> None:
    t = telemetry.Telemetry()
    sent, failed = value("patchaas_emails_total", outcome="sent"), value("patchaas_emails_total", outcome="failed")
    plain = t.mailer(Mailer())
    assert not hasattr(plain, "session")  # handoff.deliver_many falls back to send()
    plain.send(EmailMessage())
    with t.mailer(SessionMailer()).session() as send:
        send(EmailMessage())
    with pytest.raises(OSError):
        t.mailer(Mailer(fail=True)).send(EmailMessage())
    assert value("patchaas_emails_total", outcome="sent") - sent == 2
    assert value("patchaas_emails_total", outcome="failed") - failed == 1
    assert plain.sent and len(plain.sent) == 1  # the wrapped mailer's attributes


VIEW = machine.ExecutionView(id="VA1-111111", server="S1", state=machine.State.REBOOTING, account="OSD")


@pytest.mark.parametrize("command, result, event, outcome", [
    (machine.RebootServer("k"), "advanced", machine.RebootRequested("b1"), "ok"),
    (machine.RebootServer("k"), "retrying", None, "retrying"),
    (machine.RebootServer("k"), "conflict", None, "conflict"),
    (machine.RebootServer("k"), "advanced", machine.Abandoned(machine.Outcome.FAILED, "unknown server"), "refused"),
    (machine.Abandon(machine.Outcome.CANCELLED, "by jane"), "advanced",
     machine.Abandoned(machine.Outcome.CANCELLED, "by jane"), "ok"),
])
def test_a_single_step_is_counted_by_command_and_outcome(command: Any, result: str, event: Any, outcome: str) -> None:
    name = context.snake(type(command).__name__)
    before = value("patchaas_steps_total", command=name, outcome=outcome)
    with telemetry.Telemetry().step() as watch:
        watch.begin(VIEW, command)
        assert context.current()["execution_id"] == "VA1-111111"  # the step's log context, while it runs
        watch.event, watch.result = event, result
    assert context.current() == {}
    assert value("patchaas_steps_total", command=name, outcome=outcome) - before == 1


def test_an_exception_is_an_error_and_a_reaped_run_a_reaper_failure() -> None:
    t = telemetry.Telemetry()
    errors = value("patchaas_steps_total", command="reboot_server", outcome="error")
    with pytest.raises(RuntimeError), t.step() as watch:
        watch.begin(VIEW, machine.RebootServer("k"))
        raise RuntimeError("boom")
    assert value("patchaas_steps_total", command="reboot_server", outcome="error") - errors == 1
    reaped = value("patchaas_reaper_failures_total")
    with t.step() as watch:
        watch.begin(VIEW, machine.Abandon(machine.Outcome.FAILED, "reboot failed 5 times"))
        watch.event, watch.result = machine.Abandoned(machine.Outcome.FAILED, "x"), "advanced"
    assert value("patchaas_reaper_failures_total") - reaped == 1
    not_due = value("patchaas_step_duration_seconds_count", command="reboot_server")
    with t.step():
        pass  # not due: no step taken, nothing counted
    assert value("patchaas_step_duration_seconds_count", command="reboot_server") == not_due


def test_a_batch_rounds_steps_are_counted_and_in_context_while_they_run() -> None:
    t = telemetry.Telemetry()

    def step(i: int, **kw: Any) -> Any:
        view = machine.ExecutionView(id=f"VA1-00000{i}", server=f"S{i}", state=machine.State.AWAITING_BOOT)
        fields = {"conflict": False, "error": None, "event": machine.ServerInspected(None), **kw}
        return SimpleNamespace(view=view, command="PollServer", started=0.0, **fields)

    steps = [step(1), step(2, error="PollServer: 503"), step(3, conflict=True), step(4)]
    seen: list[str] = []
    t.in_step(lambda s: seen.append(context.current()["execution_id"]))(steps[0])
    assert seen == ["VA1-000001"] and "VA1-000001" in context.in_flight
    before = {o: value("patchaas_steps_total", command="poll_server", outcome=o) for o in metrics.STEP_OUTCOMES}
    t.batch_done(steps, saved={"VA1-000001"})
    after = {o: value("patchaas_steps_total", command="poll_server", outcome=o) for o in metrics.STEP_OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {"ok": 1, "retrying": 1, "conflict": 2, "refused": 0,
                                                        "error": 0}
    assert "VA1-000001" not in context.in_flight


def test_the_tick_is_timed_and_counted() -> None:
    t = telemetry.Telemetry()
    ticks, claimed = value("patchaas_tick_duration_seconds_count"), value("patchaas_tick_claimed_executions_sum")
    t.tick(0.01, 7, 2)
    assert value("patchaas_tick_duration_seconds_count") - ticks == 1
    assert value("patchaas_tick_claimed_executions_sum") - claimed == 7
    assert value("patchaas_tick_last_run_timestamp_seconds") > 1.7e9


def test_the_off_switch_does_nothing() -> None:
    null = telemetry.for_settings(False)
    driver, mailer = Driver(), Mailer()
    assert null is telemetry.NULL_TELEMETRY and null.fleet(driver, "x") is driver and null.mailer(mailer) is mailer
    with null.step() as watch:
        watch.begin(VIEW, machine.RebootServer("k"))
        assert context.current() == {}
    fn = print
    assert null.in_step(fn) is fn
    assert isinstance(telemetry.for_settings(True), telemetry.Telemetry)


def test_metric_names_follow_the_conventions_and_labels_are_bounded() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    found = metrics.every()
    assert len(found) >= 18
    for metric in found.values():
        name = metric._name
        assert name.startswith("patchaas_"), name
        if isinstance(metric, Counter):
            assert metric._type == "counter"  # exposed as <name>_total
        if isinstance(metric, Histogram) and "claimed" not in name:
            assert name.endswith("_seconds"), name
        if isinstance(metric, Gauge):
            assert name.endswith("_seconds"), name  # our one process gauge is a timestamp
        assert not {"execution_id", "execution", "server", "account", "path", "user"} & set(metric._labelnames), name


def test_a_rounds_effects_in_one_bulk_call_are_counted_each_by_its_operation() -> None:
    class Bulk(Driver):
        def perform_many(self, calls: list[tuple[str, tuple[object, ...]]]) -> list[BaseException | None]:
            return [None, FleetError("503"), FleetRefused("gone")][: len(calls)]

    fleet = telemetry.Telemetry().fleet(Bulk(), "bulk")
    assert getattr(telemetry.Telemetry().fleet(Driver(), "x"), "perform_many", None) is None
    before = {o: value("patchaas_fleet_calls_total", driver="bulk", operation="reboot", outcome=o)
              for o in ("ok", "error", "refused")}
    timed = value("patchaas_fleet_call_duration_seconds_count", driver="bulk", operation="perform_many")
    outcomes = fleet.perform_many([("reboot", ("a", "k1")), ("reboot", ("b", "k2")), ("reboot", ("c", "k3"))])
    assert outcomes[0] is None and isinstance(outcomes[1], FleetError)
    assert {o: value("patchaas_fleet_calls_total", driver="bulk", operation="reboot", outcome=o) - before[o]
            for o in before} == {"ok": 1, "error": 1, "refused": 1}
    assert value("patchaas_fleet_call_duration_seconds_count", driver="bulk", operation="perform_many") - timed == 1
