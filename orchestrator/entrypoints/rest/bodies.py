"""Request bodies and answers of the REST API in the CLC v2 shapes (camelCase on /v2, as CLC spelled them),
and the functions that translate service values into them. The patch summary and detail answers are
`schemas.patching` models, as the original patching service spelled them (snake_case)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from orchestrator.domain import rate_control
from orchestrator.entrypoints.rest import statuses
from orchestrator.services import auth, errors, rollouts, window_specs, windows
from schemas.patching import PackageRequest, QueuedServer

ALIAS_PATTERN = r"^[A-Za-z0-9]{2,4}$"
SERVER_PATTERN = r"^[A-Za-z]{2}[0-9][A-Za-z0-9]{3,10}[0-9]{2,}$"
GROUP_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{4,}$"
EXECUTION_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{6}$"
STATUS_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{1,12}$"

MAX_SERVERS = 1000
MAX_GROUPS = 100


def _plain_text(value: str) -> str:
    """Refuse what no database column or JSON answer should carry: NUL and unpaired surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]
ServerName = Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]
GroupId = Annotated[str, StringConstraints(pattern=GROUP_PATTERN, max_length=32)]


class CamelModel(BaseModel):
    """CLC v2 field names: camelCase in JSON, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class ErrorMessage(BaseModel):
    """Every error answer: a message for people (CLC's shape)."""

    message: str


# --- requests --------------------------------------------------------------------------------


class LoginRequest(BaseModel):
    """`POST /v2/authentication/login`."""

    username: str = Field(min_length=1, max_length=200, examples=["jane"])
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD, examples=["correct horse battery"])


class ExecutePackageRequest(BaseModel):
    """`POST /v2/operations/{alias}/servers/executePackage`: the seed article's body."""

    servers: list[ServerName] = Field(min_length=1, max_length=MAX_SERVERS, examples=[["VA1OSDPATCH33"]])
    package: PackageRequest


LIMIT_PATTERN = r"^[0-9]{1,6}%?$"
Limit = Annotated[str, StringConstraints(pattern=LIMIT_PATTERN, max_length=7)] | Annotated[int, Field(ge=0, le=999999)]
WaveEntry = Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]
Waves = list[Annotated[list[WaveEntry], Field(min_length=1, max_length=MAX_SERVERS)]]


class GroupExecuteRequest(BaseModel):
    """`POST /v2/operations/{alias}/groups/executePackage`: groups (nested ones included) and the package;
    optionally rate-controlled (not CLC: our extension; the answer keeps CLC's shape)."""

    groups: list[GroupId] = Field(min_length=1, max_length=MAX_GROUPS, examples=[["va1-0001"]])
    package: PackageRequest
    max_concurrency: Limit | None = Field(
        default=None, alias="maxConcurrency", examples=["10%"],
        description="servers patched at once: a count (5) or a percentage of the servers (10%)")
    max_errors: Limit | None = Field(
        default=None, alias="maxErrors", examples=[2],
        description="failures tolerated (a count or a percentage); one more stops the rollout: no new server "
                    "starts, running ones finish, the rest are skipped with the reason")
    waves: Waves | None = Field(
        default=None, max_length=rate_control.MAX_WAVES, examples=[[["va1-0002"]]],
        description="ordered waves of group ids or server names (e.g. a canary group first); each starts when "
                    "the previous one has ended; servers no wave names run last")

    def rate(self) -> rate_control.RateControl | None:
        """The rate-control options (None: a plain CLC group action); ServiceError when they are not usable."""
        if self.max_concurrency is None and self.max_errors is None and not self.waves:
            return None
        try:
            return rate_control.RateControl.parse(self.max_concurrency, self.max_errors, self.waves)
        except ValueError as exc:
            raise errors.ServiceError(str(exc)) from None


WINDOW_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
DURATION_PATTERN = r"^[0-9]{1,5}$|^([0-9]{1,4}d)?([0-9]{1,5}h)?([0-9]{1,6}m)?$"
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$"


class WindowRequest(CamelModel):
    """`POST /v2/patchaas/{alias}/windows`: a scheduled patch window."""

    name: str = Field(pattern=WINDOW_NAME_PATTERN, max_length=100, examples=["patch-friday"])
    servers: list[Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_SERVERS, examples=[["VA1OSDPATCH01"]])
    groups: list[GroupId] = Field(default_factory=list, max_length=MAX_GROUPS, examples=[["va1-0001"]])
    cron: PlainText | None = Field(default=None, max_length=200, examples=["0 22 * * 5"],
                                   description="a five-field cron expression, read in `timezone`")
    monthly: PlainText | None = Field(
        default=None, max_length=200, examples=["second Tuesday + 3 days at 22:00"],
        description="a monthly rule: first…fifth or last, a weekday, an optional ± N days, a time of day")
    timezone: str = Field(default="UTC", pattern=TIMEZONE_PATTERN, max_length=64, examples=["Europe/Berlin"])
    duration: str = Field(default="4h", pattern=DURATION_PATTERN, max_length=16, examples=["4h"],
                          description="how long the window stays open: 4h, 90m, 1h30m, or minutes")
    cutoff: str = Field(default="30m", pattern=DURATION_PATTERN, max_length=16, examples=["30m"],
                        description="no new update cycle starts in the last `cutoff` of the window")
    max_concurrency: Limit | None = Field(default=None, examples=["10%"])
    max_errors: Limit | None = Field(default=None, examples=[2])
    waves: Waves | None = Field(default=None, max_length=rate_control.MAX_WAVES, examples=[[["va1-0002"]]])
    package: PackageRequest | None = Field(default=None, description="default: the Windows update package")

    def spec(self) -> window_specs.WindowSpec:
        return window_specs.WindowSpec(
            name=self.name, servers=list(self.servers), groups=list(self.groups), cron=self.cron,
            monthly=self.monthly, timezone=self.timezone, duration=self.duration, cutoff=self.cutoff,
            max_concurrency=self.max_concurrency, max_errors=self.max_errors, waves=list(self.waves or []),
            package_id=self.package.package_id if self.package else None,
            parameters=dict(self.package.parameters) if self.package else {},
        )


class WindowChange(CamelModel):
    """`PATCH /v2/patchaas/{alias}/windows/{windowId}`: only the fields given change; `enabled: false` pauses
    the window, `true` resumes it. A new `cron` replaces a `monthly` rule and vice versa."""

    name: str | None = Field(default=None, pattern=WINDOW_NAME_PATTERN, max_length=100)
    servers: list[Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=MAX_SERVERS)
    groups: list[GroupId] | None = Field(default=None, max_length=MAX_GROUPS)
    cron: PlainText | None = Field(default=None, max_length=200, examples=["0 23 * * 5"])
    monthly: PlainText | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, pattern=TIMEZONE_PATTERN, max_length=64)
    duration: str | None = Field(default=None, pattern=DURATION_PATTERN, max_length=16)
    cutoff: str | None = Field(default=None, pattern=DURATION_PATTERN, max_length=16)
    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    waves: Waves | None = Field(default=None, max_length=rate_control.MAX_WAVES)
    package: PackageRequest | None = None
    enabled: bool | None = Field(default=None, examples=[False])

    def changes(self) -> dict[str, Any]:
        """The fields the caller sent (null clears the optional ones), as WindowService.update takes them."""
        sent = self.model_dump(exclude_unset=True, by_alias=False)
        for required in ("name", "servers", "groups", "timezone", "duration", "cutoff", "enabled"):
            if required in sent and sent[required] is None:
                raise ValueError(f"{to_camel(required)} cannot be null")
        if "package" in sent:
            package = sent.pop("package")
            if package is None:
                raise ValueError("package cannot be null")
            assert self.package is not None
            sent["package_id"], sent["parameters"] = self.package.package_id, dict(self.package.parameters)
        if "waves" in sent:
            sent["waves"] = [list(w) for w in sent["waves"] or ()]
        if not sent:
            raise ValueError("nothing to change: send at least one field")
        return sent


class CancelRequest(BaseModel):
    """`POST …/patch/{execution_id}/cancel`: why (optional); who is the token's user."""

    reason: PlainText | None = Field(default=None, max_length=2000, examples=["change freeze"])


# --- answers ---------------------------------------------------------------------------------


class LoginAnswer(CamelModel):
    """CLC's login answer."""

    user_name: str
    account_alias: str
    location_alias: str
    roles: list[str]
    bearer_token: str


class Link(BaseModel):
    """A CLC link: relation, address and (for resources) id."""

    rel: str
    href: str
    id: str | None = Field(default=None, exclude_if=lambda value: value is None)


class QueuedAnswer(CamelModel):
    """One server of an executePackage answer: queued with a status link (and our execution id), or why not."""

    server: str
    is_queued: bool
    links: list[Link] | None = None
    execution_id: str | None = Field(default=None, description="the patch execution (summary and detail calls)")
    error_message: str | None = None


class OperationStatus(BaseModel):
    """CLC's queue status answer."""

    status: statuses.QueueStatus


class OccurrenceAnswer(CamelModel):
    """One started occurrence of a window."""

    starts_at: datetime
    ends_at: datetime
    not_after: datetime = Field(description="end minus cutoff: no new update cycle starts after it")
    rollout_id: int | None
    rollout_state: str | None
    note: str | None


class WindowAnswer(CamelModel):
    """A patch window, its next occurrences (UTC) and, for one window, its recent ones."""

    id: int
    name: str
    servers: list[str]
    groups: list[str]
    schedule_kind: Literal["cron", "monthly"]
    schedule: str
    timezone: str
    duration: str
    cutoff: str
    max_concurrency: str | None
    max_errors: str | None
    waves: list[list[str]]
    package_id: str
    parameters: dict[str, Any]
    enabled: bool
    created_by: str
    created_at: datetime
    next_occurrences: list[datetime]
    recent_occurrences: list[OccurrenceAnswer]
    links: list[Link]


class RolloutAnswer(CamelModel):
    """A rate-controlled rollout: limits, state, why it stopped, its executions counted by status."""

    id: int
    state: Literal["running", "stopped", "completed"]
    total: int
    max_concurrency: str | None
    max_errors: str | None
    concurrency_limit: int
    error_limit: int | None
    waves: int
    not_after: datetime | None
    stop_reason: str | None
    created_at: datetime
    ended_at: datetime | None
    counts: dict[str, int] = Field(description="executions by status: held, running, completed, failed, cancelled")


# --- translations ----------------------------------------------------------------------------


def window_href(alias: str, window_id: int) -> str:
    return f"/v2/patchaas/{alias.lower()}/windows/{window_id}"


def rollout_href(alias: str, rollout_id: int) -> str:
    return f"/v2/patchaas/{alias.lower()}/rollouts/{rollout_id}"


def window_answer(info: windows.WindowInfo) -> WindowAnswer:
    alias = info.account_alias
    return WindowAnswer(
        id=info.id, name=info.name, servers=list(info.servers), groups=list(info.groups),
        schedule_kind=info.schedule_kind,  # type: ignore[arg-type]
        schedule=info.schedule, timezone=info.timezone, duration=info.duration, cutoff=info.cutoff,
        max_concurrency=info.max_concurrency, max_errors=info.max_errors, waves=[list(w) for w in info.waves],
        package_id=info.package_id, parameters=info.parameters, enabled=info.enabled, created_by=info.created_by,
        created_at=info.created_at, next_occurrences=list(info.next_occurrences),
        recent_occurrences=[
            OccurrenceAnswer(starts_at=o.starts_at, ends_at=o.ends_at, not_after=o.not_after, rollout_id=o.rollout_id,
                             rollout_state=o.rollout_state, note=o.note)
            for o in info.recent_occurrences
        ],
        links=[Link(rel="self", href=window_href(alias, info.id), id=str(info.id))],
    )


def rollout_answer(info: rollouts.RolloutInfo) -> RolloutAnswer:
    return RolloutAnswer(
        id=info.id, state=info.state,  # type: ignore[arg-type]
        total=info.total, max_concurrency=info.max_concurrency, max_errors=info.max_errors,
        concurrency_limit=info.concurrency_limit, error_limit=info.error_limit, waves=info.waves,
        not_after=info.not_after, stop_reason=info.stop_reason, created_at=info.created_at, ended_at=info.ended_at,
        counts=dict(info.counts),
    )



def status_href(alias: str, status_id: str) -> str:
    """Where the CLC status of a queued operation is read."""
    return f"/v2/operations/{alias.lower()}/status/{status_id}"


def server_href(alias: str, name: str) -> str:
    return f"/v2/servers/{alias.lower()}/{name}"


def group_href(alias: str, group_id: str) -> str:
    return f"/v2/groups/{alias.lower()}/{group_id}"


def summary_href(alias: str, name: str) -> str:
    return f"/rest/servers/{alias.lower()}/server/{name}/patch"


def queued_answer(alias: str, answer: QueuedServer) -> QueuedAnswer:
    """The CLC entry for one server of an executePackage call."""
    if not answer.is_queued or answer.execution_id is None:
        return QueuedAnswer(server=answer.server, is_queued=False, error_message=answer.error_message)
    status_id = statuses.status_id_of(answer.execution_id)
    return QueuedAnswer(
        server=answer.server,
        is_queued=True,
        links=[Link(rel="status", href=status_href(alias, status_id), id=status_id)],
        execution_id=answer.execution_id,
    )
