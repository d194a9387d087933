"""Patch selection: the package parameters that choose what a run installs and how it reboots.

Sent in `package.parameters` of Execute Package (camelCase, as CLC bodies are; comma-separated strings
are accepted where a list is expected, since CLC package parameters were strings):

    {"includeKbs": "KB3045685,KB3135998", "excludeKbs": [], "classifications": ["Security Updates"],
     "rebootPolicy": "if_required", "scanOnly": false}

Linux packages (Yum Update, Apt Update) also take `packageExclusions`: package-name globs ("kernel*",
"pt-excluded") this run never installs, added to the ssh driver's configured defaults
(PATCHAAS_SSH_YUM_EXCLUDES / PATCHAAS_SSH_APT_EXCLUDES). Each must be a safe glob (`SAFE_GLOB`): letters,
digits and `*?[]+._~@-`, 1 to 100 characters, so it can reach the host's shell and dnf's --exclude as is.

Windows packages also take two rules of an AWS Patch Manager patch baseline:

- `approveAfterDays` (0 to 365): only updates released at least that many days before the package searches
  (AWS's auto-approval delay). An update's release date is WUA's `IUpdate.LastDeploymentChangeTime`.
- `severities`: only updates of these MSRC severities (`IUpdate.MsrcSeverity`; WUA's empty string, the
  severity of every non-security update, is `Unspecified`).

Windows packages take `updateService` too (Default, WSUS, WindowsUpdate, MicrosoftUpdate): where the package
searches; the engine sends it as `patchaas.updateService`.

Not every field applies to every package: `REFUSED` lists, per package family, the fields its package does not
honour (for Windows, windows-update.manifest.json's `"honoured": false`), and `parse_for` refuses them at request
time when they are set, so no run silently ignores part of what it was asked.

As AWS's "approved patches" are approved whatever the auto-approval rules say, a KB listed in `includeKbs` is
not held back by `approveAfterDays` or `severities`; `excludeKbs` still wins over it, and `classifications`
still narrow `includeKbs` as they always have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import health, hooks

KB_RE = re.compile(r"^KB\d{6,8}$")
SAFE_GLOB = re.compile(r"^[A-Za-z0-9*?\[\]+._~@-]{1,100}$")  # a package exclusion (the ssh driver uses it too)


class Classification(StrEnum):
    """Microsoft update classifications."""

    SECURITY = "Security Updates"
    CRITICAL = "Critical Updates"
    ROLLUP = "Update Rollups"
    UPDATES = "Updates"
    SERVICING_STACK = "Servicing Stack Updates"
    DEFINITION = "Definition Updates"


class MsrcSeverity(StrEnum):
    """MSRC severity ratings, as WUA's `IUpdate.MsrcSeverity` gives them ("" there is UNSPECIFIED)."""

    CRITICAL = "Critical"
    IMPORTANT = "Important"
    MODERATE = "Moderate"
    LOW = "Low"
    UNSPECIFIED = "Unspecified"


MAX_APPROVE_AFTER_DAYS = 365


def severity_of(msrc_severity: str | None) -> MsrcSeverity:
    """The severity of an update whose `IUpdate.MsrcSeverity` is `msrc_severity` (None or "": UNSPECIFIED)."""
    text = (msrc_severity or "").strip()
    for severity in MsrcSeverity:
        if severity.value.lower() == text.lower():
            return severity
    if not text:
        return MsrcSeverity.UNSPECIFIED
    raise ValueError(f"not an MSRC severity: {msrc_severity!r}")


class UpdateService(StrEnum):
    """Where the Windows package searches (`updateService`; the script's IUpdateSearcher.ServerSelection)."""

    DEFAULT = "Default"  # as the server is configured (WSUS when it has one, else Windows Update)
    WSUS = "WSUS"  # the managed server (ServerSelection 1)
    WINDOWS_UPDATE = "WindowsUpdate"  # Microsoft's Windows Update (2)
    MICROSOFT_UPDATE = "MicrosoftUpdate"  # Microsoft Update, other Microsoft products too (3)


class RebootPolicy(StrEnum):
    """When the run reboots the server."""

    IF_REQUIRED = "if_required"  # reboot when a cycle needs it (the default)
    NEVER = "never"  # never reboot: install what installs without one, report the reboot as pending
    ALWAYS = "always"  # also reboot once at the end, even if nothing asked for it


def _each(value: object, normalize: Callable[[str], str], valid: Callable[[str], bool],
          refusal: Callable[[list[str]], str]) -> object:
    """A list parameter (a list, or a comma-separated string as CLC's parameters were): each item stripped and
    normalized, all of them valid, or a ValueError naming the invalid ones. Anything else is left to pydantic."""
    value = _split(value)
    if isinstance(value, Iterable) and not isinstance(value, str):
        items = tuple(normalize(str(item).strip()) for item in value)
        bad = [item for item in items if not valid(item)]
        if bad:
            raise ValueError(refusal(bad))
        return items
    return value


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class PatchSelection(BaseModel):
    """What a run may install and how it reboots; the default installs everything offered."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    include_kbs: tuple[str, ...] = Field(default=(), alias="includeKbs", description="only these KBs")
    exclude_kbs: tuple[str, ...] = Field(default=(), alias="excludeKbs", description="never these KBs")
    classifications: tuple[Classification, ...] = Field(default=(), description="only these classifications")
    reboot_policy: RebootPolicy = Field(default=RebootPolicy.IF_REQUIRED, alias="rebootPolicy")
    scan_only: bool = Field(default=False, alias="scanOnly", description="report what would install; change nothing")
    package_exclusions: tuple[str, ...] = Field(
        default=(), alias="packageExclusions", max_length=50,
        description="Linux packages only: package-name globs never installed by this run (plus the defaults)",
    )
    approve_after_days: int | None = Field(
        default=None, alias="approveAfterDays",
        description="only updates released at least this many days before the search (0 to 365)",
    )
    severities: tuple[MsrcSeverity, ...] = Field(default=(), description="only updates of these MSRC severities")
    update_service: UpdateService | None = Field(
        default=None, alias="updateService",
        description="Windows packages only: search WSUS, Windows Update or Microsoft Update (None: Default)",
    )

    @field_validator("include_kbs", "exclude_kbs", mode="before")
    @classmethod
    def _kbs(cls, value: object) -> object:
        return _each(value, lambda kb: kb.upper(), lambda kb: bool(KB_RE.match(kb)),
                     lambda bad: f"not KB numbers (KB followed by 6 to 8 digits): {', '.join(bad)}")

    @field_validator("package_exclusions", mode="before")
    @classmethod
    def _package_exclusions(cls, value: object) -> object:
        return _each(value, lambda glob: glob, lambda glob: bool(SAFE_GLOB.match(glob)),
                     lambda bad: "not safe package globs (letters, digits and *?[]+._~@- only, 1 to 100 "
                                 f"characters): {', '.join(repr(glob) for glob in bad)}")

    @field_validator("classifications", mode="before")
    @classmethod
    def _classifications(cls, value: object) -> object:
        return _split(value)

    @field_validator("approve_after_days", mode="before")
    @classmethod
    def _approve_after_days(cls, value: object) -> object:
        text = value.strip() if isinstance(value, str) else value
        if text is None or text == "":  # "" as CLC's string parameters leave an unset one
            return None
        if isinstance(text, str) and text.isdigit():
            text = int(text)
        if isinstance(text, bool) or not isinstance(text, int) or not 0 <= text <= MAX_APPROVE_AFTER_DAYS:
            raise ValueError(f"must be a whole number of days from 0 to {MAX_APPROVE_AFTER_DAYS}, not {value!r}")
        return text

    @field_validator("severities", mode="before")
    @classmethod
    def _severities(cls, value: object) -> object:
        known = {severity.value.lower(): severity for severity in MsrcSeverity}
        names = _each(value, lambda name: name, lambda name: name.lower() in known,
                      lambda bad: f"not MSRC severities ({', '.join(s.value for s in MsrcSeverity)}): "
                                  f"{', '.join(repr(name) for name in bad)}")
        if isinstance(names, tuple):
            return tuple(dict.fromkeys(known[name.lower()] for name in names))
        return names

    @field_validator("update_service", mode="before")
    @classmethod
    def _update_service(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip() in ("", "null")):
            return None
        known = {service.value.lower(): service for service in UpdateService}
        if isinstance(value, str) and value.strip().lower() in known:
            return known[value.strip().lower()]
        raise ValueError(f"must be one of {', '.join(s.value for s in UpdateService)}, not {value!r}")

    def admits(
        self,
        kb: str,
        classification: str,
        released: datetime | None = None,
        severity: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Whether an update found by the search may be installed by this run.

        `released` is the update's release date (WUA `LastDeploymentChangeTime`), `severity` its MSRC
        severity (`MsrcSeverity`; None or "" is Unspecified), `now` the moment of the search: needed only
        when the selection sets `approveAfterDays` (an update without a release date then never qualifies).
        A KB listed in `includeKbs` is approved whatever `approveAfterDays` and `severities` say (AWS's
        approved patches); `excludeKbs` wins over everything; `classifications` apply to every update.
        """
        if kb in self.exclude_kbs:
            return False
        if self.include_kbs and kb not in self.include_kbs:
            return False
        if self.classifications and classification not in {c.value for c in self.classifications}:
            return False
        if kb in self.include_kbs:
            return True
        if self.severities and severity_of(severity) not in self.severities:
            return False
        if self.approve_after_days is not None:
            if now is None:
                raise ValueError("approveAfterDays needs the moment of the search (now)")
            if released is None or now - released < timedelta(days=self.approve_after_days):
                return False
        return True

    def as_parameters(self) -> dict[str, object]:
        """The selection as package parameters (what the package on the server reads)."""
        return self.model_dump(mode="json", by_alias=True)


def parse(parameters: dict[str, object] | None) -> PatchSelection:
    """The selection in a package's parameters (ValueError with a readable message when invalid)."""
    from pydantic import ValidationError

    try:
        chosen = PatchSelection.model_validate({k: v for k, v in (parameters or {}).items() if k not in RUN_OPTIONS})
        hooks.parse_names((parameters or {}).get("hooks"))
        health.parse(parameters)  # healthChecks, onHealthFailure (ValueError with its own readable message)
        return chosen
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid package parameters: {problems}") from None


RUN_OPTIONS = frozenset({"hooks", *health.PARAMETERS})
"""Package parameters the orchestrator itself reads (schemas/hooks.py: which of the account's hooks the run uses);
never sent to the update package."""

FIELDS = frozenset({"includeKbs", "excludeKbs", "classifications", "rebootPolicy", "scanOnly", "packageExclusions",
                    "approveAfterDays", "severities", "updateService"})

REFUSED: Mapping[str, Mapping[str, str]] = {
    # package family (orchestrator/domain/packages.py) -> selection field -> why its package does not honour it.
    # The Windows entries are windows-update.manifest.json's `"honoured": false` (a unit test keeps them equal).
    "windows": {
        "packageExclusions": "Linux package-name globs: Windows updates have no package names (use excludeKbs)",
    },
    "linux": {
        "updateService": "a Windows Update service (WSUS, Windows Update, Microsoft Update): Linux packages use the "
                         "host's configured repositories",
    },
}


def unset(value: object) -> bool:
    """A parameter value that sets nothing: None, "", "null" or an empty list (CLC's string parameters)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in ("", "null")
    return isinstance(value, list | tuple | set | frozenset) and not value


def parse_for(family: str, parameters: dict[str, object] | None, package: str = "this package") -> PatchSelection:
    """`parse`, then refuse every selection field that a package of `family` does not honour (REFUSED) and that
    the parameters set: ValueError naming the field, the package and why."""
    chosen = parse(parameters)
    refused = REFUSED.get(family, {})
    for name, value in (parameters or {}).items():
        if name in refused and not unset(value):
            raise ValueError(f"invalid package parameters: {name} is not supported by {package}: {refused[name]}")
    return chosen


def selection_of(parameters: dict[str, object] | None) -> PatchSelection:
    """The selection part of package parameters that were validated at request time (other keys ignored)."""
    return parse({k: v for k, v in (parameters or {}).items() if k in FIELDS})
