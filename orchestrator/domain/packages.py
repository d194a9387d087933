"""The script packages the service runs, and which operating systems each supports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    """A script package: its CLC id, its public name and the OS types it can patch."""

    id: str
    name: str
    os_types: frozenset[str]

    def supports(self, os_type: str) -> bool:
        """Whether a server of `os_type` can be patched by this package."""
        return os_type in self.os_types

    @property
    def family(self) -> str:
        """"windows" or "linux": which selection fields the package honours (schemas/selection.py REFUSED)."""
        return "windows" if all(os_family(os_type) == "windows" for os_type in self.os_types) else "linux"

    def describe(self) -> str:
        return f"the {self.name} package ({self.id})"


WINDOWS_2012 = frozenset({"Windows 2012 Datacenter 64-bit", "Windows 2012R2 Datacenter 64-bit"})
# CLC osType spellings ("CentOS 6 64-bit", "RedHat Enterprise Linux 7 64-bit"), and today's RHEL family
RHEL_FAMILY = frozenset(
    {f"CentOS {v} 64-bit" for v in (5, 6, 7)}
    | {f"RedHat Enterprise Linux {v} 64-bit" for v in (5, 6, 7, 8, 9)}
    | {f"Rocky Linux {v} 64-bit" for v in (8, 9)}
    | {f"AlmaLinux {v} 64-bit" for v in (8, 9)}
)
DEBIAN_FAMILY = frozenset(
    {f"Debian {v} 64-bit" for v in (10, 11, 12)} | {f"Ubuntu {v} 64-bit" for v in (20, 22, 24)}
)
LINUX = RHEL_FAMILY | DEBIAN_FAMILY

YUM_UPDATE = "5d743f04-a9ce-4174-a7c8-52df93c47c08"
YUM_UPDATE_2016 = "c3c6642e-24e1-4c37-b56a-1cf1476ee360"
APT_UPDATE = "7c1e5d0a-4b8f-4e21-9a3d-0f6b2c8e1a57"  # ours: the original had no apt package


def os_family(os_type: str) -> str:
    """"windows", "linux" (RHEL or Debian family) or "unknown": which fleet driver reaches the server."""
    if os_type in LINUX or os_type.lower().startswith(("centos", "redhat", "rhel", "rocky", "alma", "debian",
                                                          "ubuntu")):
        return "linux"
    if os_type.lower().startswith("windows"):
        return "windows"
    return "unknown"

PACKAGES: dict[str, Package] = {
    p.id: p
    for p in (
        Package("94bd395f-9b54-4693-94ae-4f3aa93fc239", "Windows Update Scripts", WINDOWS_2012),
        # the id in the original article's API example
        Package("94644f15-a6c6-4db2-881a-bf645a56cbe0", "Windows Update Scripts", WINDOWS_2012),
        Package("b229535c-a313-4a31-baf8-6aa71ff4b9ed", "Auto Patching Windows 2012", WINDOWS_2012),
        # Linux: the original's "Yum Update" (kernel and nss excluded by default), and our apt equivalent
        Package(YUM_UPDATE, "Yum Update", RHEL_FAMILY),
        Package(YUM_UPDATE_2016, "Yum Update", RHEL_FAMILY),
        Package(APT_UPDATE, "Apt Update", DEBIAN_FAMILY),
    )
}


class UnknownPackage(LookupError):
    """No package has this id."""


def get(package_id: str) -> Package:
    """The package with `package_id`, or UnknownPackage with a message naming the known ones."""
    try:
        return PACKAGES[package_id.lower()]
    except KeyError:
        known = ", ".join(f"{p.name} ({p.id})" for p in PACKAGES.values())
        raise UnknownPackage(f"unknown package {package_id!r}; known packages: {known}") from None
