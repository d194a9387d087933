"""The texts of the original service, word for word, and how durations and HRESULTs are printed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

INIT_BEGIN = "Invoking SUS API"
EXECUTION_BEGIN = "Update Process BEGIN"
EXECUTION_END = "Updating Complete"
INIT_BEGIN_YUM = "Invoking yum check-update"  # the original's Linux text ("Yum Update" package)
INIT_BEGIN_APT = "Invoking apt-get update"  # its apt equivalent

# the Linux packages of orchestrator/domain/packages.py; every other package is Windows Update ("Invoking SUS API")
_INIT_BEGIN_OF_PACKAGE = {
    "5d743f04-a9ce-4174-a7c8-52df93c47c08": INIT_BEGIN_YUM,
    "c3c6642e-24e1-4c37-b56a-1cf1476ee360": INIT_BEGIN_YUM,
    "7c1e5d0a-4b8f-4e21-9a3d-0f6b2c8e1a57": INIT_BEGIN_APT,
}


def init_begin(package_id: str) -> str:
    """The begin message of one cycle of `package_id`."""
    return _INIT_BEGIN_OF_PACKAGE.get(package_id.lower(), INIT_BEGIN)


def init_end(urls: Iterable[str]) -> str:
    """The end message of one cycle: how many updates and their support URLs, or the final cycle's text."""
    found = [url for url in urls]
    if not found:
        return "Update Process Complete. There are 0 updates to install"
    return f"Updates Downloaded Successfully downloaded {len(found)} updates to install##{' '.join(found)}##"


def scan_end(urls: Iterable[str]) -> str:
    """The end message of a scan-only cycle: what would be installed."""
    found = list(urls)
    return f"Scan Complete: {len(found)} updates would be installed##{' '.join(found)}##"


def patch_begin(title: str) -> str:
    """The begin message of one patch record."""
    return f"Installing {title}"


def patch_end(result_code: int, hresult: int) -> str:
    """The end message of one patch record: the WUA result code, with the HRESULT when it is not clean."""
    if result_code == 2 and not hresult:
        return "Result Code: 2"
    return f"Result Code: {result_code} (HRESULT {hresult_hex(hresult)})"


def hresult_hex(hresult: int) -> str:
    """An HRESULT as Windows prints it: 0x80070643."""
    return f"0x{hresult & 0xFFFFFFFF:08X}"


def duration(delta: timedelta) -> str:
    """Minutes and seconds as the original detail printed them: "20m 4s" (hours folded into minutes)."""
    seconds = max(0, int(delta.total_seconds()))
    return f"{seconds // 60}m {seconds % 60}s"


def execution_end(outcome: str, reason: str | None, note: str | None = None) -> str:
    """The execution's end message (a completed run may carry a note, e.g. a reboot left pending)."""
    if outcome == "completed":
        return f"{EXECUTION_END} ({note})" if note else EXECUTION_END
    if outcome == "cancelled":
        return f"Updating Cancelled: {reason}" if reason else "Updating Cancelled"
    return f"Updating Failed: {reason}" if reason else "Updating Failed"


def quarantine_reason(quarantined: Mapping[str, str]) -> str:
    """Why a run that patched the rest of the server still failed."""
    parts = [f"{kb} {why}" for kb, why in sorted(quarantined.items())]
    noun = "update" if len(parts) == 1 else "updates"
    return f"{len(parts)} {noun} could not be installed: " + "; ".join(parts)


BLOCKED_WORDS: Mapping[str, str] = {  # schemas.fleet.BlockedBy
    "reboot_pending": "a reboot is pending",
    "installer_busy": "the Windows Update installer is busy",
    "another_run": "another run holds the server's install lock",
    "deadline": "too close to the cycle's deadline",
}


def blocked_end(blocked_by: str, urls: Iterable[str], remaining: int) -> str:
    """The end message of a cycle that stopped installing (CycleReport.blocked_by): why, and what is left."""
    found = list(urls)
    done = f"; {len(found)} updates reported##{' '.join(found)}##" if found else ""
    return (f"Update Install Blocked: {BLOCKED_WORDS.get(blocked_by, blocked_by)} ({blocked_by}); "
            f"{remaining} updates left for the next cycle{done}")


def search_warnings(warnings: Iterable[str], search_result_code: int | None = None) -> str:
    """What a cycle's end message adds about its search: partial (3) and the WUA warnings, if any."""
    listed = [w for w in warnings if w]
    parts = ["the search was partial (result code 3)"] if search_result_code == 3 else []
    if listed:
        shown = "; ".join(listed[:5]) + (f"; and {len(listed) - 5} more" if len(listed) > 5 else "")
        parts.append(f"search warnings: {shown}")
    return f" [{'; '.join(parts)}]" if parts else ""
