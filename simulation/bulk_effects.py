"""The simulated fleet's bulk effects (`SimulatedFleet.perform_many`, called by a batch round through
orchestrator/engine/effects.py): many effect calls in one store transaction instead of one each.

Each call runs the fleet's own method, unchanged, on a view of the fleet whose store is `RoundStore`: the
sessions of one `many()` transaction (every server locked in name order, the operations of the calls'
keys read in one statement). A call that raises leaves its server's session as it found it (state,
operations, effects), exactly as its own transaction would have rolled back; the others are committed
together when the transaction ends. If the transaction itself fails, nothing of it happened and the
caller retries every call (the round falls back to one call each).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestrator.ports import FleetRefused
from simulation.store import StoreSession

Call = tuple[str, tuple[Any, ...]]  # (operation, its arguments): ("invoke_package", (server, key, run))


def key_of(operation: str, args: tuple[Any, ...]) -> str:
    """The idempotency key of an effect call (set_maintenance takes `on` before it)."""
    return str(args[2] if operation == "set_maintenance" else args[1])


class RoundStore:
    """A FleetStore over sessions already open in one transaction (`SqlStore.many`, `MemoryStore.many`)."""

    def __init__(self, sessions: dict[str, StoreSession]) -> None:
        self._sessions = sessions

    @contextmanager
    def session(self, server: str) -> Iterator[StoreSession]:
        session = self._sessions.get(server)
        if session is None:
            raise FleetRefused(f"server {server} not found")
        state, ops, effects = session.state, dict(session.new_ops), len(session.new_effects)
        try:
            yield session
        except BaseException:
            session.state, session.new_ops = state, ops  # as if this call's own transaction rolled back
            del session.new_effects[effects:]
            raise


def perform_many(fleet: Any, calls: Sequence[Call]) -> list[BaseException | None]:
    """Each call's outcome, in order: None when done, else the exception its own call would have raised."""
    many = getattr(fleet.store, "many", None)
    if many is None:  # a store without bulk sessions: one call each
        return [_outcome(fleet, operation, args) for operation, args in calls]
    servers = [str(args[0]) for _, args in calls]
    with many(servers, [(str(args[0]), operation, key_of(operation, args)) for operation, args in calls]) as sessions:
        view = copy.copy(fleet)  # the same timings, clock and fault rolls, on this transaction's sessions
        view.store = RoundStore(sessions)
        return [_outcome(view, operation, args) for operation, args in calls]


def _outcome(fleet: Any, operation: str, args: tuple[Any, ...]) -> BaseException | None:
    try:
        getattr(fleet, operation)(*args)
    except Exception as error:  # FleetError, FleetRefused, anything: that call's outcome, not the batch's
        return error
    return None
