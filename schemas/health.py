"""Health checks of a run (issue 14 part 2, docs/HOOKS.md "Health checks"): the `healthChecks` and
`onHealthFailure` package parameters (a patch window's `parameters` carry the same), validated at request time.

    "healthChecks": [
      {"name": "web", "kind": "http", "url": "https://10.0.0.5/health", "expectedStatus": 200, "bodyRegex": "ok"},
      {"name": "sql", "kind": "tcp", "host": "10.0.0.5", "port": 1433},
      {"name": "iis", "kind": "service", "service": "W3SVC", "afterEveryReboot": true},
      {"name": "app", "kind": "command", "command": "Test-Path C:\\app\\ready", "retries": 5}
    ],
    "onHealthFailure": "fail"

`http` and `tcp` run from the orchestrator; `service` and `command` run on the server through the fleet driver.
Each attempt must answer within `deadlineSeconds`; a failed attempt is tried again `retries` times,
`retryDelaySeconds` apart.
"""

from __future__ import annotations

import json
import re
import shlex
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_CHECKS = 10
MAX_OUTPUT = 2000  # characters of a check's output kept
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SERVICE = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$"  # a Windows service or a systemd unit name


class CheckKind(StrEnum):
    HTTP = "http"  # GET the URL from the orchestrator: the expected status (and the body regex)
    TCP = "tcp"  # the port accepts a connection from the orchestrator
    SERVICE = "service"  # on the server: the Windows service / systemd unit is running
    COMMAND = "command"  # on the server: the command exits 0 (PowerShell on Windows, sh on Linux)


class OnHealthFailure(StrEnum):
    FAIL = "fail"  # the execution ends failed with the check's output; maintenance mode stays on
    CONTINUE = "continue"  # the execution ends completed, with a warning


class Phase(StrEnum):
    """When checks run."""

    BASELINE = "baseline"  # before maintenance goes on: was it already broken?
    AFTER_REBOOT = "after_reboot"  # after each settled reboot that another cycle follows (afterEveryReboot)
    FINAL = "final"  # after the last cycle (and its reboot), before maintenance goes off


class HealthCheck(BaseModel):
    """One check."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME)
    kind: CheckKind
    url: str | None = Field(default=None, max_length=2000)
    expected_status: int = Field(default=200, ge=100, le=599, alias="expectedStatus")
    body_regex: str | None = Field(default=None, max_length=500, alias="bodyRegex")
    host: str | None = Field(default=None, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    service: str | None = Field(default=None, pattern=SERVICE)
    command: str | None = Field(default=None, min_length=1, max_length=4000)
    deadline_seconds: float = Field(default=10.0, gt=0, le=120, alias="deadlineSeconds")
    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: float = Field(default=10.0, ge=0, le=600, alias="retryDelaySeconds")
    after_every_reboot: bool = Field(default=False, alias="afterEveryReboot")

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bodyRegex is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> HealthCheck:
        wanted = {CheckKind.HTTP: {"url"}, CheckKind.TCP: {"host", "port"}, CheckKind.SERVICE: {"service"},
                  CheckKind.COMMAND: {"command"}}[self.kind]
        for field in ("url", "host", "port", "service", "command"):
            value = getattr(self, field)
            if field in wanted and value is None:
                raise ValueError(f"{self.kind.value} checks need `{field}`")
            if field not in wanted and value is not None:
                raise ValueError(f"{self.kind.value} checks take no `{field}`")
        if self.kind is not CheckKind.HTTP and self.body_regex is not None:
            raise ValueError("bodyRegex is for http checks")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be an http:// or https:// URL with a host")
        return self

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def target(self) -> str:
        """What the check looks at, in a few words."""
        match self.kind:
            case CheckKind.HTTP:
                return f"GET {self.url} → {self.expected_status}"
            case CheckKind.TCP:
                return f"tcp {self.host}:{self.port}"
            case CheckKind.SERVICE:
                return f"service {self.service}"
        return f"command {self.command}"[:200]


class HealthPlan(BaseModel):
    """The checks of a run and what a failure does."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    checks: tuple[HealthCheck, ...] = Field(default=(), max_length=MAX_CHECKS, alias="healthChecks")
    on_failure: OnHealthFailure = Field(default=OnHealthFailure.FAIL, alias="onHealthFailure")

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[HealthCheck, ...]) -> tuple[HealthCheck, ...]:
        names = [c.name for c in checks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"check names must be unique: {', '.join(twice)} given twice")
        return checks

    def at(self, phase: Phase) -> tuple[HealthCheck, ...]:
        """The checks that run in `phase` (all of them, except after a reboot: those with afterEveryReboot)."""
        if phase is Phase.AFTER_REBOOT:
            return tuple(c for c in self.checks if c.after_every_reboot)
        return self.checks

    def check(self, name: str) -> HealthCheck:
        return next(c for c in self.checks if c.name == name)


PARAMETERS = frozenset({"healthChecks", "onHealthFailure"})


def parse(parameters: dict[str, Any] | None) -> HealthPlan:
    """The health plan in package parameters; ValueError with a readable message when invalid."""
    chosen = {k: v for k, v in (parameters or {}).items() if k in PARAMETERS and v not in (None, "")}
    if isinstance(chosen.get("healthChecks"), str):  # CLC's parameters are strings: a JSON list in one
        try:
            chosen["healthChecks"] = json.loads(str(chosen["healthChecks"]))
        except ValueError:
            raise ValueError("invalid package parameters: healthChecks: not a JSON list of checks") from None
    try:
        return HealthPlan.model_validate(chosen)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid package parameters: {problems}") from None


def plan_of(parameters: dict[str, Any] | None) -> HealthPlan:
    """The plan of parameters validated at request time (a run queued before checks existed has none)."""
    try:
        return parse(parameters)
    except ValueError:
        return HealthPlan()


def service_command(service: str, family: str) -> str:
    """What an on-server `service` check runs: `systemctl is-active` on Linux, PowerShell `Get-Service` on Windows
    (exit 1 unless Running, 2 when there is no such service)."""
    if family == "linux":
        return f"systemctl is-active {shlex.quote(service)}"
    quoted = service.replace("'", "''")
    return (f"$s = Get-Service -Name '{quoted}' -ErrorAction SilentlyContinue; "
            f"if ($null -eq $s) {{ 'service {quoted} not found'; exit 2 }}; "
            f"\"service {quoted} is $($s.Status)\"; if ($s.Status -ne 'Running') {{ exit 1 }}")


_SERVICE_COMMAND = re.compile(r"^(?:systemctl is-active (?P<unit>\S+)|\$s = Get-Service -Name '(?P<win>(?:[^']|'')+)')")


def service_of_command(command: str) -> str | None:
    """The service a `service_command` checks (a simulated server answers it from its state), else None."""
    found = _SERVICE_COMMAND.match(command)
    if found is None:
        return None
    if found.group("unit"):
        return shlex.split(found.group("unit"))[0]
    return found.group("win").replace("''", "'")
