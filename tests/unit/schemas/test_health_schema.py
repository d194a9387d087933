"""The health checks of a run's package parameters (schemas/health.py): what is accepted, and the 4xx message of
what is not (selection.parse raises it at request time, for a request and a patch window alike)."""

from __future__ import annotations

import json

import pytest

from schemas import health, selection

WEB = {"name": "web", "kind": "http", "url": "https://10.0.0.5/health", "bodyRegex": "ok|up"}


def test_every_kind_is_accepted_with_its_defaults() -> None:
    plan = health.parse({"healthChecks": [
        WEB, {"name": "sql", "kind": "tcp", "host": "10.0.0.5", "port": 1433},
        {"name": "iis", "kind": "service", "service": "W3SVC", "afterEveryReboot": True},
        {"name": "app", "kind": "command", "command": "test -e /srv/app/ready", "retries": 0},
    ], "onHealthFailure": "continue"})
    assert [c.kind for c in plan.checks] == ["http", "tcp", "service", "command"]
    assert plan.on_failure is health.OnHealthFailure.CONTINUE
    web = plan.check("web")
    assert web.expected_status == 200 and web.deadline_seconds == 10 and web.attempts == 3
    assert web.target == "GET https://10.0.0.5/health → 200"
    assert [c.name for c in plan.at(health.Phase.AFTER_REBOOT)] == ["iis"]
    assert len(plan.at(health.Phase.BASELINE)) == len(plan.at(health.Phase.FINAL)) == 4


def test_no_checks_is_an_empty_plan_failing_by_default() -> None:
    assert health.parse({}) == health.HealthPlan() and health.parse({}).on_failure is health.OnHealthFailure.FAIL


def test_clc_string_parameters_carry_the_checks_as_json() -> None:
    assert health.parse({"healthChecks": json.dumps([WEB])}).checks[0].name == "web"
    with pytest.raises(ValueError, match="healthChecks: not a JSON list"):
        health.parse({"healthChecks": "[{"})


@pytest.mark.parametrize(("check", "message"), [
    ({"name": "w", "kind": "http"}, "http checks need `url`"),
    ({"name": "w", "kind": "http", "url": "ftp://x/"}, "url must be an http:// or https:// URL"),
    ({"name": "w", "kind": "tcp", "host": "h"}, "tcp checks need `port`"),
    ({"name": "w", "kind": "tcp", "host": "h", "port": 70000}, "less than or equal to 65535"),
    ({"name": "w", "kind": "service", "service": "W3SVC", "url": "http://x/"}, "service checks take no `url`"),
    ({"name": "w", "kind": "command", "command": "x", "bodyRegex": "a"}, "bodyRegex is for http checks"),
    ({**WEB, "bodyRegex": "("}, "bodyRegex is not a regular expression"),
    ({**WEB, "retries": 50}, "retries: Input should be less than or equal to 20"),
    ({**WEB, "deadlineSeconds": 0}, "deadlineSeconds: Input should be greater than 0"),
    ({**WEB, "kind": "ping"}, "healthChecks.0.kind"),
    ({**WEB, "name": "bad name"}, "healthChecks.0.name"),
    ({**WEB, "colour": "red"}, "colour: Extra inputs are not permitted"),
])
def test_a_bad_check_is_refused_with_a_message_naming_it(check: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid package parameters") as error:
        selection.parse({"healthChecks": [check]})
    assert message in str(error.value)


def test_names_are_unique_and_the_policy_is_one_of_two() -> None:
    with pytest.raises(ValueError, match="check names must be unique: web given twice"):
        selection.parse({"healthChecks": [WEB, WEB]})
    with pytest.raises(ValueError, match="onHealthFailure: Input should be 'fail' or 'continue'"):
        selection.parse({"onHealthFailure": "ignore"})
    with pytest.raises(ValueError, match="at most 10 items"):
        selection.parse({"healthChecks": [{**WEB, "name": f"w{i}"} for i in range(11)]})


def test_the_checks_are_run_options_never_sent_to_the_update_package() -> None:
    assert {"healthChecks", "onHealthFailure"} <= selection.RUN_OPTIONS
    assert selection.parse({"healthChecks": [WEB], "rebootPolicy": "always"}).reboot_policy == "always"


def test_a_service_check_runs_the_families_command_and_a_simulator_can_read_it_back() -> None:
    linux = health.service_command("nginx.service", "linux")
    windows = health.service_command("W3SVC", "windows")
    assert linux == "systemctl is-active nginx.service"
    assert windows.startswith("$s = Get-Service -Name 'W3SVC'") and "if ($s.Status -ne 'Running') { exit 1 }" in windows
    assert health.service_of_command(linux) == "nginx.service" and health.service_of_command(windows) == "W3SVC"
    assert health.service_of_command("echo ready") is None
