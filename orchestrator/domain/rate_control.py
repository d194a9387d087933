"""Rate control of a rollout: max concurrency and max errors (a count or a percentage, as AWS Systems Manager
takes them), and waves (groups or servers released in order). Pure: parsing and arithmetic."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_WAVES = 20
LIMIT_PATTERN = re.compile(r"^\s*(\d{1,6})\s*(%?)\s*$")


# --- the rate-control options ------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A count ("5") or a percentage of the targets ("10%")."""

    value: int
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_limit(raw: str | int | None, what: str, minimum: int = 0) -> Limit | None:
    """A count or a percentage; ValueError with a message for people when it is neither."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ValueError(f"{what} must be a count (5) or a percentage of the targets (10%), not {raw!r}")
    match = LIMIT_PATTERN.match(str(raw))
    if match is None:
        raise ValueError(f"{what} must be a count (5) or a percentage of the targets (10%), not {raw!r}")
    value, percent = int(match.group(1)), bool(match.group(2))
    if percent and not minimum <= value <= 100:
        raise ValueError(f"{what} must be a percentage between {minimum}% and 100%, not {raw!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, not {raw!r}")
    return Limit(value, percent)


def concurrency_limit(limit: Limit | None, total: int) -> int:
    """How many executions may run at once: all of them without a limit; a percentage rounds up, at least 1."""
    if limit is None:
        return max(1, total)
    if limit.percent:
        return max(1, math.ceil(total * limit.value / 100))
    return max(1, limit.value)


def error_limit(limit: Limit | None, total: int) -> int | None:
    """How many failures are tolerated (a percentage rounds down); one more crosses the threshold."""
    if limit is None:
        return None
    if limit.percent:
        return math.floor(total * limit.value / 100)
    return limit.value


@dataclass(frozen=True)
class RateControl:
    """Max concurrency, error threshold and ordered waves of one rollout. Each wave is a list of group ids
    or server names; a wave starts only when the previous one has ended; targets no wave names run last."""

    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    waves: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def parse(
        cls,
        max_concurrency: str | int | None = None,
        max_errors: str | int | None = None,
        waves: Sequence[Sequence[str]] | None = None,
    ) -> RateControl:
        """Validated options (ValueError with a message for people)."""
        concurrency = parse_limit(max_concurrency, "maxConcurrency", minimum=1)
        errors = parse_limit(max_errors, "maxErrors", minimum=0)
        parsed: list[tuple[str, ...]] = []
        for index, wave in enumerate(waves or (), start=1):
            if isinstance(wave, str):
                wave = [part for part in wave.split(",")]
            names = tuple(str(name).strip() for name in wave if str(name).strip())
            if not names:
                raise ValueError(f"wave {index} is empty: give group ids or server names")
            parsed.append(names)
        if len(parsed) > MAX_WAVES:
            raise ValueError(f"at most {MAX_WAVES} waves, not {len(parsed)}")
        return cls(concurrency, errors, tuple(parsed))

    @property
    def empty(self) -> bool:
        return self.max_concurrency is None and self.max_errors is None and not self.waves

    def describe(self) -> str:
        parts = [f"max concurrency {self.max_concurrency or 'unlimited'}"]
        parts.append(f"max errors {self.max_errors}" if self.max_errors is not None else "no error threshold")
        if self.waves:
            parts.append(f"{len(self.waves)} wave(s) first")
        return ", ".join(parts)


def assign_waves(names: Sequence[str], waves: Sequence[Iterable[str]]) -> dict[str, int]:
    """The wave of each target: the first wave that holds it; the rest run in one more wave at the end."""
    wave_of: dict[str, int] = {}
    for index, members in enumerate(waves):
        for name in members:
            wave_of.setdefault(name, index)
    rest = len(waves)
    return {name: wave_of.get(name, rest) for name in names}
