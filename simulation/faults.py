"""Crash hooks: kill the process at the engine's named points, so chaos tests reach the dangerous windows.

The engine calls `hooks.reached(point, execution_id, step)` at four points (see `orchestrator.engine`):

- ``after_intent``  the intent is committed, the effect not yet done (window 1);
- ``after_effect``  the effect is done on the fleet, the transition not yet committed (window 2);
- ``after_commit``  the transition is committed, the next step not yet handed to a worker;
- ``after_email``   an email went out over SMTP, its outbox row is not yet marked sent
                    (``execution_id`` is then the outbox id, ``step`` is ``deliver``);
- ``after_webhook`` a webhook delivery was POSTed, not yet marked (``execution_id`` is the delivery id).

`CrashHooks` kills its own process with SIGKILL (no cleanup, no atexit, no flush: what the OOM killer or a
power cut does) when a rule matches. Rules come from a spec, e.g. ``PATCHAAS_CRASH_POINTS``::

    after_intent:0.05,after_effect:0.05        each time, with probability 5 % (seeded per process)
    after_effect@rebooting#2                   the 2nd time any step "rebooting" reaches after_effect
    after_intent@VA1-123456/rebooting#1        execution VA1-123456, step rebooting, the first time only
    after_intent@VA1-123456/invoking_package   every time: a poison step (the reaper must fail the run)

Grammar: ``rule := point ["@" [execution "/"] step] [":" probability | "#" nth]``, rules separated by
commas; the step is the execution's state when the point is reached (``machine.State`` values).

``#nth`` counts per process, unless a shared `state_dir` is given (``PATCHAAS_CRASH_STATE_DIR``): then
the count is kept in a file under a lock, so "the first time" means the first time across every
process of the cluster, restarts included, and a deterministic crash fires exactly once. Every crash is
appended to ``<state_dir>/crashes.log`` (one line: unix time, pid, point, execution, step, rule) before
the kill, so a test can count what it injected.

Production never builds this: `hooks_from_settings` returns None unless ``crash_points`` is set.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.settings import Settings

POINTS: frozenset[str] = frozenset({"after_intent", "after_effect", "after_commit", "after_email", "after_webhook"})
CRASH_LOG = "crashes.log"


class FaultSpecError(ValueError):
    """A crash spec that cannot be parsed."""


@dataclass(frozen=True)
class CrashRule:
    """One rule of a crash spec."""

    text: str
    point: str
    execution: str | None = None
    step: str | None = None
    probability: float | None = None  # each match crashes with this probability
    nth: int | None = None  # only the nth match crashes

    def matches(self, point: str, execution_id: str, step: str) -> bool:
        return (
            point == self.point
            and (self.execution is None or self.execution == execution_id)
            and (self.step is None or self.step == step)
        )


def parse(spec: str) -> list[CrashRule]:
    """The rules of `spec` (see the module docstring)."""
    rules: list[CrashRule] = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            continue
        body, probability, nth = text, None, None
        if "#" in body:
            body, _, count = body.partition("#")
            try:
                nth = int(count)
            except ValueError:
                raise FaultSpecError(f"crash rule {text!r}: {count!r} after '#' is not a whole number") from None
            if nth < 1:
                raise FaultSpecError(f"crash rule {text!r}: counts start at 1")
        elif ":" in body:
            body, _, chance = body.partition(":")
            try:
                probability = float(chance)
            except ValueError:
                raise FaultSpecError(f"crash rule {text!r}: {chance!r} after ':' is not a probability") from None
            if not 0.0 <= probability <= 1.0:
                raise FaultSpecError(f"crash rule {text!r}: probability {probability} is not within [0, 1]")
        point, _, selector = body.partition("@")
        point = point.strip()
        if point not in POINTS:
            raise FaultSpecError(f"crash rule {text!r}: unknown point {point!r}; known: {', '.join(sorted(POINTS))}")
        execution, step = None, None
        if selector:
            if "/" in selector:
                execution, _, step = selector.partition("/")
            else:
                step = selector
            execution, step = (execution or None), (step or None)
        rules.append(CrashRule(text, point, execution, step, probability, nth))
    return rules


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # pragma: no cover - SIGKILL does not return


class CrashHooks:
    """The engine's `Hooks`: crash at the points the rules name."""

    def __init__(
        self,
        rules: list[CrashRule],
        seed: int = 0,
        state_dir: str | Path | None = None,
        crash: Callable[[], None] = _kill_self,
    ) -> None:
        self.rules = rules
        self.seed = seed
        self.state_dir = Path(state_dir) if state_dir else None
        self.crash = crash
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rng: random.Random | None = None
        self._rng_pid = -1
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_spec(cls, spec: str, seed: int = 0, state_dir: str | Path | None = None,
                  crash: Callable[[], None] = _kill_self) -> CrashHooks:
        return cls(parse(spec), seed, state_dir, crash)

    def reached(self, point: str, execution_id: str, step: str) -> None:
        for rule in self.rules:
            if rule.matches(point, execution_id, step) and self._fires(rule):
                self._log(rule, point, execution_id, step)
                self.crash()
                return

    # --- internals ---------------------------------------------------------------------------

    def _fires(self, rule: CrashRule) -> bool:
        if rule.nth is not None:
            return self._count(rule) == rule.nth
        if rule.probability is not None:
            return self._random() < rule.probability
        return True

    def _random(self) -> float:
        with self._lock:
            pid = os.getpid()
            if self._rng is None or self._rng_pid != pid:  # a forked pool child gets its own stream
                self._rng = random.Random(f"{self.seed}:{pid}")
                self._rng_pid = pid
            return self._rng.random()

    def _count(self, rule: CrashRule) -> int:
        """How many times `rule` has matched, this one included: per process, or cluster-wide."""
        if self.state_dir is None:
            with self._lock:
                self._counts[rule.text] = self._counts.get(rule.text, 0) + 1
                return self._counts[rule.text]
        name = "count-" + hashlib.sha1(rule.text.encode()).hexdigest()[:16]
        fd = os.open(self.state_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0).decode().strip()
            count = (int(raw) if raw else 0) + 1
            # one fixed-width write in place, never truncate-then-write: a process SIGKILLed between the two
            # (the chaos test kills workers at random) left an empty file, the count restarted at 1 and a
            # "fires exactly once" rule fired again
            os.pwrite(fd, f"{count:020d}".encode(), 0)
            os.fsync(fd)
            return count
        finally:
            os.close(fd)  # closing releases the lock

    def _log(self, rule: CrashRule, point: str, execution_id: str, step: str) -> None:
        if self.state_dir is None:
            return
        line = f"{time.time():.3f} {os.getpid()} {point} {execution_id} {step} {rule.text}\n"
        fd = os.open(self.state_dir / CRASH_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def crash_log(state_dir: str | Path) -> list[dict[str, str]]:
    """The crashes recorded under `state_dir`, oldest first (for tests and the soak report)."""
    path = Path(state_dir) / CRASH_LOG
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        at, pid, point, execution, step, rule = line.split(" ", 5)
        entries.append({"at": at, "pid": pid, "point": point, "execution": execution, "step": step, "rule": rule})
    return entries


def hooks_from_settings(settings: Settings) -> CrashHooks | None:
    """Crash hooks when settings ask for them (``PATCHAAS_CRASH_POINTS``); None otherwise."""
    if not settings.crash_points:
        return None
    return CrashHooks.from_spec(settings.crash_points, settings.crash_seed, settings.crash_state_dir)
