"""What a simulated server does with a hook's command (the Fleet's `run_command`, docs/HOOKS.md).

A tiny, documented language, so tests and the demo can script a hook's outcome without a real shell. Statements
are separated by `;` or new lines and run in order until one ends the command:

- `echo TEXT`  — TEXT is added to the output;
- `fail TEXT`  — TEXT is added to the output and the command exits 1;
- `exit N`     — the command exits N;
- `sleep S`    — the command takes S more seconds (of the fleet's clock; nothing sleeps): past the timeout it is
  stopped and answered as timed out;
- anything else "runs" and succeeds, adding `ran: <statement>` to the output.

Pure: the fleet (simulation/fleet.py) keeps each result under its idempotency key, so a repeat answers it.
"""

from __future__ import annotations

from schemas.hooks import MAX_OUTPUT, CommandResult


def run(command: str, timeout: float) -> tuple[CommandResult, float]:
    """The result of `command` and how many seconds it took."""
    lines: list[str] = []
    took = 0.0
    code = 0
    for raw in command.replace("\n", ";").split(";"):
        statement = raw.strip()
        if not statement:
            continue
        verb, _, rest = statement.partition(" ")
        if verb == "echo":
            lines.append(rest)
        elif verb == "fail":
            lines.append(rest)
            code = 1
            break
        elif verb == "exit":
            code = int(rest) if rest.strip().lstrip("-").isdigit() else 2
            break
        elif verb == "sleep":
            took += float(rest) if rest.replace(".", "", 1).isdigit() else 0.0
            if took > timeout:
                return CommandResult(exit_code=-1, output="\n".join(lines)[:MAX_OUTPUT], timed_out=True), timeout
        else:
            lines.append(f"ran: {statement}")
    return CommandResult(exit_code=code, output="\n".join(lines)[:MAX_OUTPUT]), took
