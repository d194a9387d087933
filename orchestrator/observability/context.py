"""The log context of the step being taken: every log line written while the engine takes a step of an
execution carries `execution_id`, `server`, `account`, `state` and `step` (the state machine's command).

The engine puts the step in a contextvar (`enter`/`leave`): a single step (`Stepper.advance`) for its whole
duration, a batch round's step while its plan and its effect run on the round's threads. The fields are read
lazily, only when a line is written. Lines a batch writes in its own loop about one of its executions (a
release, a lost compare-and-set) name the execution id among their arguments: `in_flight` maps the ids of
the steps a round is running to their context, and the filter looks the id up there.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar, Token
from typing import Any

FIELDS = ("execution_id", "server", "account", "state", "step")
_current: ContextVar[Any] = ContextVar("patchaas_step", default=None)
in_flight: dict[str, Any] = {}  # execution id -> the step of a batch round running it (bounded below)
MAX_IN_FLIGHT = 20_000


def enter(step: Any) -> Token[Any]:
    """Make `step` (anything with `.view`, an ExecutionView, and `.command`, a name) the current step."""
    return _current.set(step)


def leave(token: Token[Any]) -> None:
    _current.reset(token)


def track(execution_id: str, step: Any) -> None:
    if len(in_flight) >= MAX_IN_FLIGHT:  # a batch that died between its rounds' start and end: forget them
        in_flight.clear()
    in_flight[execution_id] = step


def untrack(execution_id: str) -> None:
    in_flight.pop(execution_id, None)


def fields_of(step: Any) -> dict[str, str]:
    view = getattr(step, "view", None)
    if view is None:
        return {}
    state = getattr(view, "state", "")
    return {
        "execution_id": str(view.id),
        "server": str(view.server),
        "account": str(getattr(view, "account", "") or ""),
        "state": str(getattr(state, "value", state)),
        "step": snake(str(getattr(step, "command", "") or "")),
    }


def current() -> dict[str, str]:
    """The fields of the current step ({} outside a step)."""
    step = _current.get()
    return {} if step is None else fields_of(step)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_SNAKE: dict[str, str] = {}


def snake(name: str) -> str:
    """`InvokeUpdatePackage` -> `invoke_update_package` (the commands' names, as labels and log fields)."""
    found = _SNAKE.get(name)
    if found is None:
        found = _SNAKE[name] = _CAMEL.sub("_", name).lower() if name and not name.islower() else name
    return found


class ContextFilter(logging.Filter):
    """Adds the current step's fields to every record (on the handler: third-party loggers included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "execution_id", None):
            return True  # the caller said which execution (extra=...)
        step = _current.get()
        if step is None and in_flight and isinstance(record.args, tuple):
            step = next((s for a in record.args if isinstance(a, str) and (s := in_flight.get(a)) is not None), None)
        if step is not None:
            for key, value in fields_of(step).items():
                setattr(record, key, value)
        return True
