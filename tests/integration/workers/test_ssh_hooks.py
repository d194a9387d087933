"""The SSH driver's hook wrapper (workers/fleet/ssh_hooks.py), run by a real `sh` on this machine as the host
would run it: the command's exit code and output come back, a repeat under the same key answers the first run
without running it again, a run still going answers BUSY (the engine asks later), and `timeout` stops a command
that runs too long."""

from __future__ import annotations

import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from orchestrator.ports import FleetError
from workers.fleet import ssh_hooks


def run(state: Path, key: str, command: str, timeout: float = 10) -> str:
    line = ssh_hooks.invocation(key, command, timeout)
    done = subprocess.run(["sh", "-c", line], input=ssh_hooks.wrapper(str(state)), capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout


def test_the_exit_code_and_output_come_back(tmp_path: Path) -> None:
    result = ssh_hooks.parse("web01", run(tmp_path, "E1:hook:pre_cycle:1:smoke", "echo smoke ok; exit 3"))
    assert (result.exit_code, result.output, result.timed_out) == (3, "smoke ok", False)


def test_a_repeat_under_the_same_key_does_not_run_the_command_again(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    command = f"echo x >> {shlex.quote(str(counter))}; echo ran"
    first = ssh_hooks.parse("web01", run(tmp_path / "state", "E1:hook:post_run:2:count", command))
    again = ssh_hooks.parse("web01", run(tmp_path / "state", "E1:hook:post_run:2:count", command))
    assert first == again and first.ok
    assert counter.read_text().splitlines() == ["x"]


def test_a_run_still_going_answers_busy(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    command = f"while [ ! -f {shlex.quote(str(gate))} ]; do sleep 0.05; done; echo released"
    first: list[str] = []
    worker = threading.Thread(target=lambda: first.append(run(tmp_path / "state", "E2:hook:pre_cycle:1:x", command)))
    worker.start()
    try:
        lock = tmp_path / "state" / "E2_hook_pre_cycle_1_x.lock"
        for _ in range(200):
            if lock.exists():
                break
            threading.Event().wait(0.05)
        with pytest.raises(FleetError, match="still running"):
            ssh_hooks.parse("web01", run(tmp_path / "state", "E2:hook:pre_cycle:1:x", command))
    finally:
        gate.write_text("")
        worker.join(30)
    assert ssh_hooks.parse("web01", first[0]).output == "released"


def test_a_command_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    result = ssh_hooks.parse("web01", run(tmp_path, "E3:hook:pre_cycle:1:slow", "sleep 5", timeout=1))
    assert result.timed_out and not result.ok


def test_an_answer_that_is_not_the_wrappers_is_a_transient_error() -> None:
    with pytest.raises(FleetError, match="unexpected answer"):
        ssh_hooks.parse("web01", "sh: 1: base64: not found\n")
