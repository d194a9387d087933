"""The vocabulary a simulated fleet's store keeps: JSON-able documents (specs, server states, operations)
and the side effects the fleet received, recorded so tests can assert each happened exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Document = dict[str, Any]


class EffectKind(StrEnum):
    """A side effect the fleet received."""

    INSTALL = "install"
    REBOOT = "reboot"
    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    MAINTENANCE_ON = "maintenance_on"
    MAINTENANCE_OFF = "maintenance_off"
    COMMAND = "command"  # a hook's command ran (simulation/commands.py), once per idempotency key


@dataclass(frozen=True)
class Effect:
    """One side effect: what was done to which server under which idempotency key, and when."""

    server: str
    kind: EffectKind
    key: str
    kb: str | None
    at: float
