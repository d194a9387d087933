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


WINDOWS_2012 = frozenset({"Windows 2012 Datacenter 64-bit", "Windows 2012R2 Datacenter 64-bit"})

PACKAGES: dict[str, Package] = {
    p.id: p
    for p in (
        Package("94bd395f-9b54-4693-94ae-4f3aa93fc239", "Windows Update Scripts", WINDOWS_2012),
        # the id in the original article's API example
        Package("94644f15-a6c6-4db2-881a-bf645a56cbe0", "Windows Update Scripts", WINDOWS_2012),
        Package("b229535c-a313-4a31-baf8-6aa71ff4b9ed", "Auto Patching Windows 2012", WINDOWS_2012),
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
