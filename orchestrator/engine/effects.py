"""The effects of a batch round, done together once every intent of the round is committed.

A round plans each step with the engine's own `perform`; its effect comes back as a closure that calls one
effect method of the fleet the round planned with (`set_maintenance`, `power_on`, `power_off`, `reboot`,
`invoke_package`). That fleet is a `RoundFleet`: when the round then runs the closures, the calls are
*recorded* (step, operation, arguments) instead of made, and `perform` hands them all to the driver's
optional bulk method `perform_many(calls) -> [None | exception, ...]` (in the calls' order): the simulated
fleet does them in one store transaction, an HTTP driver keeps many of them in flight at once. A driver
without it, and a bulk call that fails as a whole, fall back to what rounds always did: one call each on
the round's pool.

Nothing of the durability model changes: `perform` runs only after the round's intents are committed (a
step whose intent did not commit has no closure here), each call carries its own idempotency key, and each
step's outcome (done, refused, failed) is taken exactly as a call of its own would have been.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

EFFECTS = ("set_maintenance", "power_on", "power_off", "reboot", "invoke_package")


class RoundFleet:
    """The fleet a round plans with: reads and everything else go to `inner` (the round's prefetching
    reader or the engine's fleet); effect calls are recorded while `recording` names the step they belong
    to, and go to `inner` otherwise."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._local = threading.local()
        self.calls: list[tuple[Any, str, tuple[Any, ...]]] = []  # (step, operation, arguments)
        for operation in EFFECTS:
            setattr(self, operation, self._effect(operation))

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_local"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _effect(self, operation: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            step = getattr(self._local, "step", None)
            if step is None:
                return getattr(self._inner, operation)(*args)  # type: ignore[no-any-return]
            self.calls.append((step, operation, args))
            return None

        call.__name__ = operation
        return call

    def record(self, step: Any, act: Callable[[], None]) -> None:
        """Run `act` with its effect call recorded for `step` instead of made."""
        self._local.step = step
        try:
            act()
        finally:
            self._local.step = None


def bulk_of(fleet: Any) -> Callable[[Sequence[tuple[str, tuple[Any, ...]]]], list[BaseException | None]] | None:
    """The driver's `perform_many`, if it has one."""
    return getattr(fleet, "perform_many", None)


def perform(engine_fleet: Any, fleet: Any, steps: list[Any], act_each: Callable[[list[Any], bool], None]) -> None:
    """The effects of `steps` (their intents committed): in one `perform_many` call of `engine_fleet` when
    it has one and the round planned on `fleet`, a `RoundFleet`; else `act_each(steps, True)`, the round's
    own effect of each step on its pool. After a bulk call each step's outcome goes through
    `act_each(steps, False)` as if its closure had made the call (done, refused or failed)."""
    bulk = bulk_of(engine_fleet)
    if bulk is None or not isinstance(fleet, RoundFleet) or len(steps) < 2:
        act_each(steps, True)
        return
    fleet.calls.clear()
    for s in steps:
        assert s.act is not None
        fleet.record(s, s.act)
    recorded = {id(step): (operation, args) for step, operation, args in fleet.calls}
    fleet.calls.clear()
    calls = [recorded[id(s)] for s in steps if id(s) in recorded]
    try:
        outcomes = list(bulk(calls))
        if len(outcomes) != len(calls):
            raise RuntimeError(f"perform_many answered {len(outcomes)} outcomes for {len(calls)} calls")
    except Exception as error:  # the bulk call failed as a whole: nothing is known, each is tried on its own
        log.warning("bulk effects of %d steps failed (%s: %s); one call each", len(calls), type(error).__name__,
                    error)
        act_each(steps, True)
        return
    by_step = iter(outcomes)
    for s in steps:
        outcome = next(by_step) if id(s) in recorded else None
        s.act = _done if outcome is None else _raiser(outcome)
    act_each(steps, False)


def _done() -> None:
    return None


def _raiser(error: BaseException) -> Callable[[], None]:
    def act() -> None:
        raise error

    return act
