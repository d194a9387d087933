"""A hook's command on a CLC server (docs/HOOKS.md): Execute Package of our hook script package, once per
idempotency key, then its result read from our control plane's `commandRuns` until it is in (the CLC simulator
answers both). Mixed into `ClcFleet` (workers/fleet/clc.py), whose HTTP plumbing it uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from orchestrator.ports import FleetError
from schemas.hooks import CommandResult
from workers.fleet import clc_wire


class ClcCommands:
    """`run_command` of the Fleet protocol for the `clc` driver."""

    config: Any
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _call: Callable[..., httpx.Response]
    _check: Callable[[httpx.Response, str], None]
    _queue: Callable[[str, object, str, str], str]
    _ensure_alias: Callable[[], str]

    def run_command(self, server: str, key: str, command: str, timeout: float) -> CommandResult:
        """A hook's command: Execute Package of our hook script package (clc_wire.HOOK_PACKAGE_ID), once per key
        (a run the control plane already has under `key` is not queued again), then its result polled until it
        is in or `timeout` (plus one poll) has passed."""
        if self._command_run(server, key) is None:
            parameters = {clc_wire.HOOK_COMMAND: command, clc_wire.HOOK_TIMEOUT_SECONDS: str(max(1, int(timeout))),
                          clc_wire.PARAM_IDEMPOTENCY_KEY: key}
            body = {"servers": [server], "package": {"packageId": clc_wire.HOOK_PACKAGE_ID, "parameters": parameters}}
            self._queue("executePackage", body, server, key)
        until = self._clock() + timeout + self.config.poll_interval
        while True:
            found = self._command_run(server, key)
            if found is not None and found.get("state") == "finished":
                return CommandResult(exit_code=int(found.get("exitCode", -1)), output=str(found.get("output") or ""),
                                     timed_out=bool(found.get("timedOut")))
            if self._clock() >= until:
                return CommandResult(exit_code=-1, output=f"no result from {server} within {timeout:g}s",
                                     timed_out=True)
            self._sleep(self.config.poll_interval)

    def _command_run(self, server: str, key: str) -> dict[str, object] | None:
        response = self._call("GET", clc_wire.command_run_path(self._ensure_alias(), server, key))
        if response.status_code == 404 and clc_wire.body_of(response).get("code") == clc_wire.COMMAND_RUN_NOT_FOUND:
            return None
        self._check(response, f"command run {key} on {server}")
        answer = clc_wire.json_answer(response)
        if not isinstance(answer, dict):
            raise FleetError(f"malformed command run answer for {key} on {server}")
        return answer
