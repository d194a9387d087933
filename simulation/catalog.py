"""The update catalog of the simulated fleet: what Windows Update offers Windows Server 2012 and 2012 R2.

Each update carries the fields a WUA search returns (KB, title, classification, reboot behaviour) plus the
wave it belongs to: wave 0 is offered first (servicing stack updates, baseline updates); an update of a later
wave is offered only once the earlier waves are installed and the server rebooted (cumulative rollups).
Every wave holds at least one update that always needs a reboot and at least one that never does, so a
server given the first W waves needs W reboots and W + 1 cycles.

Each update also has its release age and MSRC severity, for the patch-baseline rules of a run
(`approveAfterDays`, `severities`): `age_days` is how many days before the simulated server was created the
update was released (its WUA `LastDeploymentChangeTime`), older in early waves (months) than in later ones
(down to days); `msrc_severity` is WUA's `MsrcSeverity`, "" (Unspecified) for every non-security update.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

KB_PATTERN = re.compile(r"^KB\d{6,8}$")
MSRC_SEVERITIES: tuple[str, ...] = ("Critical", "Important", "Moderate", "Low", "")  # "": Unspecified
DAY = 86400.0
UPDATE_ID_NAMESPACE = uuid.UUID("6f1d3a2e-8b7c-4e59-9a0d-2c4b6e8f1a3d")  # of the simulated UpdateIDs
REVISION_NUMBER = 200  # IUpdate.Identity.RevisionNumber of every simulated update

WINDOWS_2012 = "Windows 2012 Datacenter 64-bit"
WINDOWS_2012R2 = "Windows 2012R2 Datacenter 64-bit"
SUPPORTED_OS_TYPES: frozenset[str] = frozenset({WINDOWS_2012, WINDOWS_2012R2})
UNSUPPORTED_OS_EXAMPLES: tuple[str, ...] = ("Windows 2008 R2 Datacenter 64-bit", "CentOS 6 64-bit")


class Classification(StrEnum):
    """The WSUS classification of an update."""

    SECURITY = "Security Updates"
    CRITICAL = "Critical Updates"
    ROLLUP = "Update Rollups"
    UPDATE = "Updates"
    SERVICING_STACK = "Servicing Stack Updates"
    DEFINITION = "Definition Updates"


class RebootBehavior:
    """WUA `InstallationBehavior.RebootBehavior` values."""

    NEVER = 0
    ALWAYS = 1
    CAN_REQUEST = 2


@dataclass(frozen=True)
class CatalogUpdate:
    """One update as Windows Update offers it, with the wave in which the simulation offers it."""

    kb: str
    title: str
    url: str
    classification: Classification
    wave: int
    reboot_behavior: int
    age_days: float = 0.0  # released this many days before the simulated server was created
    msrc_severity: str = ""  # WUA MsrcSeverity: Critical, Important, Moderate, Low or "" (Unspecified)

    def __post_init__(self) -> None:
        if not KB_PATTERN.match(self.kb):
            raise ValueError(f"{self.kb!r} is not a KB article id (KB + 6 to 8 digits)")
        if not self.title:
            raise ValueError(f"{self.kb}: empty title")
        if self.wave < 0:
            raise ValueError(f"{self.kb}: wave {self.wave} is negative")
        if self.reboot_behavior not in (
            RebootBehavior.NEVER,
            RebootBehavior.ALWAYS,
            RebootBehavior.CAN_REQUEST,
        ):
            raise ValueError(f"{self.kb}: reboot behavior {self.reboot_behavior} is not 0, 1 or 2")
        if self.age_days < 0:
            raise ValueError(f"{self.kb}: age {self.age_days} days is negative")
        if self.msrc_severity not in MSRC_SEVERITIES:
            raise ValueError(f"{self.kb}: MSRC severity {self.msrc_severity!r} is not one of {MSRC_SEVERITIES}")
        object.__setattr__(self, "classification", Classification(self.classification))

    @property
    def update_id(self) -> str:
        """WUA's `IUpdate.Identity.UpdateID`: a GUID, the same for the same KB in every simulated fleet."""
        return str(uuid.uuid5(UPDATE_ID_NAMESPACE, self.kb))

    def released_at(self, epoch: float) -> float:
        """When the update was released (a timestamp), for a server created at `epoch`."""
        return epoch - self.age_days * DAY


def kb_url(kb: str) -> str:
    """The support article of a KB."""
    return f"https://support.microsoft.com/en-us/kb/{kb.removeprefix('KB')}"


def is_supported(os_type: str) -> bool:
    """Whether the update package runs on this CLC OS type."""
    return os_type in SUPPORTED_OS_TYPES


def _update(
    kb: str, title: str, classification: Classification, wave: int, reboot: int, age: float, severity: str = ""
) -> CatalogUpdate:
    return CatalogUpdate(kb, f"{title} ({kb})", kb_url(kb), classification, wave, reboot, age, severity)


_S = Classification.SECURITY
_C = Classification.CRITICAL
_R = Classification.ROLLUP
_U = Classification.UPDATE
_SSU = Classification.SERVICING_STACK
_D = Classification.DEFINITION
_R2 = "Windows Server 2012 R2"
_2012 = "Windows Server 2012"
_NET_R2 = "for Windows 8.1 and Server 2012 R2 for x64"
_NET_2012 = "on Windows Server 2012 for x64"

WINDOWS_2012R2_UPDATES: tuple[CatalogUpdate, ...] = (
    # wave 0: servicing stack, the April 2014 baseline, early security updates
    _update("KB2919442", f"Servicing Stack Update for {_R2}", _SSU, 0, 0, 402),
    _update("KB3021910", f"Servicing Stack Update for {_R2}", _SSU, 0, 0, 341),
    _update("KB3173424", f"Servicing Stack Update for {_R2}", _SSU, 0, 0, 287),
    _update("KB2919355", f"Update for {_R2}", _U, 0, 1, 365),
    _update("KB3000850", f"Update Rollup for {_R2}", _R, 0, 1, 318),
    _update("KB3045685", f"Security Update for {_R2}", _S, 0, 1, 254, "Critical"),
    _update("KB3035126", f"Security Update for {_R2}", _S, 0, 1, 221, "Important"),
    _update("KB2976897", f"Security Update for {_R2}", _S, 0, 2, 190, "Moderate"),
    _update("KB3138615", f"Update for {_R2}", _C, 0, 0, 163),
    _update("KB890830", "Windows Malicious Software Removal Tool x64 - April 2016", _R, 0, 0, 131),
    _update("KB2461484", "Definition Update for System Center Endpoint Protection", _D, 0, 0, 97),
    _update("KB3102467", f"Microsoft .NET Framework 4.6.1 {_NET_R2}", _U, 0, 1, 120),
    # wave 1: updates that need the baseline
    _update(
        "KB3135998", f"Security Update for Microsoft .NET Framework 4.6 and 4.6.1 {_NET_R2}", _S, 1, 2, 84, "Important"
    ),
    _update("KB3146723", f"Security Update for {_R2}", _S, 1, 1, 71, "Important"),
    _update("KB3142045", f"Security Update for {_R2}", _S, 1, 1, 66, "Low"),
    _update("KB3139929", f"Cumulative Security Update for Internet Explorer 11 for {_R2}", _S, 1, 1, 59, "Critical"),
    _update("KB3139398", f"Security Update for {_R2}", _S, 1, 2, 52, "Moderate"),
    _update("KB3137728", f"Update for {_R2}", _U, 1, 0, 47),
    _update("KB3123479", f"Update for {_R2}", _U, 1, 0, 41),
    # wave 2: the first monthly rollups
    _update("KB3185331", f"2016-10 Security Monthly Quality Rollup for {_R2}", _S, 2, 1, 30, "Critical"),
    _update("KB3197874", f"2016-11 Security Monthly Quality Rollup for {_R2}", _S, 2, 1, 23, "Important"),
    _update(
        "KB3188744",
        f"2016-10 Security and Quality Rollup for .NET Framework 4.6, 4.6.1, 4.6.2 {_NET_R2}",
        _S,
        2,
        2,
        17,
        "Moderate",
    ),
    _update("KB3191564", f"Windows Management Framework 5.1 for {_R2}", _U, 2, 1, 12),
    _update("KB3172614", f"Update for {_R2}", _U, 2, 0, 9),
    # wave 3: later cumulative rollups
    _update("KB3205401", f"2016-12 Security Monthly Quality Rollup for {_R2}", _S, 3, 1, 8, "Critical"),
    _update("KB3212646", f"2017-01 Security Monthly Quality Rollup for {_R2}", _S, 3, 1, 6, "Important"),
    _update("KB4012216", f"2017-03 Security Monthly Quality Rollup for {_R2}", _S, 3, 1, 4, "Critical"),
    _update("KB3210137", f"Update for {_R2}", _U, 3, 0, 3),
    _update(
        "KB4014505", f"2017-04 Security and Quality Rollup for .NET Framework 4.6 {_NET_R2}", _S, 3, 2, 2, "Low"
    ),
    _update("KB2267602", "Definition Update for Windows Defender", _D, 3, 0, 1),
)

WINDOWS_2012_UPDATES: tuple[CatalogUpdate, ...] = (
    # wave 0
    _update("KB2989930", f"Servicing Stack Update for {_2012}", _SSU, 0, 0, 388),
    _update("KB3173426", f"Servicing Stack Update for {_2012}", _SSU, 0, 0, 296),
    _update("KB3045685", f"Security Update for {_2012}", _S, 0, 1, 254, "Critical"),
    _update("KB3035126", f"Security Update for {_2012}", _S, 0, 1, 221, "Important"),
    _update("KB3061518", f"Security Update for {_2012}", _S, 0, 2, 176, "Low"),
    _update("KB890830", "Windows Malicious Software Removal Tool x64 - April 2016", _R, 0, 0, 131),
    _update("KB2461484", "Definition Update for System Center Endpoint Protection", _D, 0, 0, 97),
    _update("KB3102439", f"Microsoft .NET Framework 4.6.1 {_NET_2012}", _U, 0, 1, 118),
    # wave 1
    _update(
        "KB3135996", f"Security Update for Microsoft .NET Framework 4.6 and 4.6.1 {_NET_2012}",
        _S, 1, 2, 84, "Important",
    ),
    _update("KB3146723", f"Security Update for {_2012}", _S, 1, 1, 71, "Important"),
    _update(
        "KB3139929", f"Cumulative Security Update for Internet Explorer 10 for {_2012}", _S, 1, 1, 59, "Critical"
    ),
    _update("KB3138612", f"Update for {_2012}", _C, 1, 0, 44),
    # wave 2
    _update("KB3185332", f"2016-10 Security Monthly Quality Rollup for {_2012}", _S, 2, 1, 30, "Critical"),
    _update("KB3197877", f"2016-11 Security Monthly Quality Rollup for {_2012}", _S, 2, 1, 23, "Moderate"),
    _update("KB3191565", f"Windows Management Framework 5.1 for {_2012}", _U, 2, 2, 12),
    _update("KB3172615", f"Update for {_2012}", _U, 2, 0, 10),
    # wave 3
    _update("KB3205409", f"2016-12 Security Monthly Quality Rollup for {_2012}", _S, 3, 1, 8, "Critical"),
    _update("KB3212651", f"2017-01 Security Monthly Quality Rollup for {_2012}", _S, 3, 1, 5, "Important"),
    _update("KB3210136", f"Update for {_2012}", _U, 3, 0, 3),
    _update("KB2267602", "Definition Update for Windows Defender", _D, 3, 0, 1),
)

CATALOG: Mapping[str, tuple[CatalogUpdate, ...]] = {
    WINDOWS_2012: WINDOWS_2012_UPDATES,
    WINDOWS_2012R2: WINDOWS_2012R2_UPDATES,
}


def catalog_for(os_type: str) -> tuple[CatalogUpdate, ...]:
    """Every update the catalog holds for `os_type` (empty for an unsupported OS)."""
    return CATALOG.get(os_type, ())


def waves(updates: tuple[CatalogUpdate, ...]) -> list[int]:
    """The distinct waves of `updates`, lowest first."""
    return sorted({update.wave for update in updates})
