"""Patch selection: the package parameters that choose what a run installs and how it reboots.

Sent in `package.parameters` of Execute Package (camelCase, as CLC bodies are; comma-separated strings
are accepted where a list is expected, since CLC package parameters were strings):

    {"includeKbs": "KB3045685,KB3135998", "excludeKbs": [], "classifications": ["Security Updates"],
     "rebootPolicy": "if_required", "scanOnly": false}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

KB_RE = re.compile(r"^KB\d{6,8}$")


class Classification(StrEnum):
    """Microsoft update classifications."""

    SECURITY = "Security Updates"
    CRITICAL = "Critical Updates"
    ROLLUP = "Update Rollups"
    UPDATES = "Updates"
    SERVICING_STACK = "Servicing Stack Updates"
    DEFINITION = "Definition Updates"


class RebootPolicy(StrEnum):
    """When the run reboots the server."""

    IF_REQUIRED = "if_required"  # reboot when a cycle needs it (the default)
    NEVER = "never"  # never reboot: install what installs without one, report the reboot as pending
    ALWAYS = "always"  # also reboot once at the end, even if nothing asked for it


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

    @field_validator("include_kbs", "exclude_kbs", mode="before")
    @classmethod
    def _kbs(cls, value: object) -> object:
        value = _split(value)
        if isinstance(value, Iterable) and not isinstance(value, str):
            kbs = tuple(str(kb).strip().upper() for kb in value)
            bad = [kb for kb in kbs if not KB_RE.match(kb)]
            if bad:
                raise ValueError(f"not KB numbers (KB followed by 6 to 8 digits): {', '.join(bad)}")
            return kbs
        return value

    @field_validator("classifications", mode="before")
    @classmethod
    def _classifications(cls, value: object) -> object:
        return _split(value)

    def admits(self, kb: str, classification: str) -> bool:
        """Whether an update found by the search may be installed by this run."""
        if kb in self.exclude_kbs:
            return False
        if self.include_kbs and kb not in self.include_kbs:
            return False
        return not self.classifications or classification in {c.value for c in self.classifications}

    def as_parameters(self) -> dict[str, object]:
        """The selection as package parameters (what the package on the server reads)."""
        return self.model_dump(mode="json", by_alias=True)


def parse(parameters: dict[str, object] | None) -> PatchSelection:
    """The selection in a package's parameters (ValueError with a readable message when invalid)."""
    from pydantic import ValidationError

    try:
        return PatchSelection.model_validate(parameters or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid package parameters: {problems}") from None


FIELDS = frozenset({"includeKbs", "excludeKbs", "classifications", "rebootPolicy", "scanOnly"})


def selection_of(parameters: dict[str, object] | None) -> PatchSelection:
    """The selection part of package parameters that were validated at request time (other keys ignored)."""
    return parse({k: v for k, v in (parameters or {}).items() if k in FIELDS})
