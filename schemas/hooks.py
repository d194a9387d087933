"""Pre/post hooks (issue 14 part 3, docs/HOOKS.md): what an operator defines per account and what a hook run
answers. No logic beyond the shape of the values; the service (orchestrator/services/hooks.py) checks the rest.

A hook is either a command run on the server through the fleet driver (`kind: command`) or an HTTP call made by
the orchestrator (`kind: http`); it runs at one or more fixed points of a run.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")  # an HTTP token (RFC 9110)
MAX_COMMAND_TIMEOUT = 240  # a hook runs inside one engine step: well under the default lease (300 s)
MAX_HTTP_TIMEOUT = 60
MAX_OUTPUT = 4000  # characters of a hook's output kept in its run


class HookPoint(StrEnum):
    """Where in a run a hook runs."""

    PRE_MAINTENANCE = "pre_maintenance"  # before maintenance mode is turned on (the run has changed nothing yet)
    PRE_CYCLE = "pre_cycle"  # before each cycle's update package is invoked
    POST_CYCLE = "post_cycle"  # after each cycle's report is recorded (before the reboot it may need)
    POST_RUN = "post_run"  # after cleanup (maintenance off, power restored), before the run ends: every outcome


PRE_POINTS = frozenset({HookPoint.PRE_MAINTENANCE, HookPoint.PRE_CYCLE})


class HookKind(StrEnum):
    """What a hook does."""

    COMMAND = "command"  # a command on the server, through the fleet driver (script package / SSH)
    HTTP = "http"  # an HTTP request from the orchestrator


class OnFailure(StrEnum):
    """What a failed post_* hook does to the run (a failed pre_* hook always stops it)."""

    FAIL = "fail"  # the run ends failed with the hook's output
    WARN = "warn"  # the failure is recorded (hook run, event) and the run goes on


class HttpMethod(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class HookSpec(BaseModel):
    """A hook as PUT defines it (camelCase on the wire). Secret headers are given in clear once
    (`secretHeaders`, sealed at rest) or named by a reference the workers read (`headersRef`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True)

    kind: HookKind
    points: tuple[HookPoint, ...] = Field(min_length=1, max_length=4, examples=[["pre_maintenance", "post_run"]])
    on_failure: OnFailure = Field(default=OnFailure.FAIL, description="post_* hooks: fail the run, or warn")
    timeout_seconds: int = Field(default=60, ge=1, le=MAX_COMMAND_TIMEOUT,
                                 description=f"at most {MAX_COMMAND_TIMEOUT} (command) or {MAX_HTTP_TIMEOUT} (http)")
    command: str | None = Field(default=None, min_length=1, max_length=4000,
                                description="kind command: run on the server (PowerShell on Windows, sh on Linux)")
    method: HttpMethod = Field(default=HttpMethod.POST, description="kind http")
    url: str | None = Field(default=None, min_length=8, max_length=2000, description="kind http: http(s) URL")
    headers: dict[str, str] = Field(default_factory=dict, max_length=20,
                                    description="kind http: headers stored as given (nothing secret)")
    secret_headers: dict[str, str] | None = Field(default=None, max_length=20,
                                                  description="kind http: headers sealed at rest, never answered")
    headers_ref: str | None = Field(default=None, max_length=500,
                                    description="kind http: env:NAME or file:/path holding a JSON object of headers")
    body: str | None = Field(default=None, max_length=20000,
                             description="kind http: a Jinja2 template of the request body (sandboxed)")

    @field_validator("points")
    @classmethod
    def _unique_points(cls, points: tuple[HookPoint, ...]) -> tuple[HookPoint, ...]:
        if len(set(points)) != len(points):
            raise ValueError("a point is listed twice")
        return points

    @field_validator("headers", "secret_headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        for name, value in (headers or {}).items():
            if not HEADER_RE.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if "\r" in value or "\n" in value or len(value) > 4000:
                raise ValueError(f"the value of header {name} has a line break or is longer than 4000 characters")
        return headers

    @model_validator(mode="after")
    def _fields_of_kind(self) -> HookSpec:
        http_only = {"url": self.url, "headers": self.headers, "secretHeaders": self.secret_headers,
                     "headersRef": self.headers_ref, "body": self.body}
        if self.kind is HookKind.COMMAND:
            if not self.command:
                raise ValueError("a command hook needs `command`")
            given = [name for name, value in http_only.items() if value]
            if given:
                raise ValueError(f"a command hook takes no {', '.join(given)}")
        else:
            if not self.url:
                raise ValueError("an http hook needs `url`")
            if self.command:
                raise ValueError("an http hook takes no command")
            if self.timeout_seconds > MAX_HTTP_TIMEOUT:
                raise ValueError(f"an http hook's timeoutSeconds is at most {MAX_HTTP_TIMEOUT}")
            if self.secret_headers and self.headers_ref:
                raise ValueError("give secretHeaders or headersRef, not both")
        return self


class CommandResult(BaseModel):
    """What a command run on a server answered (the Fleet's `run_command`)."""

    model_config = ConfigDict(frozen=True)

    exit_code: int
    output: str = ""  # stdout and stderr, cut to MAX_OUTPUT characters
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def parse_names(value: object) -> tuple[str, ...] | None:
    """The `hooks` package parameter: None (absent, null or "": every hook of the account), () for "none" (no
    hook), else the names listed (a list, or a comma-separated string as CLC's parameters were)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return ()
        value = [part for part in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("invalid package parameters: hooks: a list of hook names, a comma-separated string of "
                         "them, or \"none\"")
    names = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    bad = [n for n in names if not NAME_RE.match(n)]
    if bad or len(names) > 20:
        raise ValueError(f"invalid package parameters: hooks: at most 20 names of 1 to 63 lower-case letters, digits, "
                         f"- or _ (not {', '.join(repr(b) for b in bad) or 'more than 20'})")
    return names
