"""The chaos tests' cluster-wide crash counts (simulation/faults.py with a shared state folder): "the nth time"
means the nth time across every process, and a process SIGKILLed at any moment, even while it holds the
count's lock, never makes the count restart (it did: a kill between truncating the file and writing the new
count left it empty, and a `#3` rule fired a second time in the chaos run)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulation import faults

COUNTER = """
import sys
from simulation import faults
hooks = faults.CrashHooks(faults.parse("after_email#1000000000"), state_dir=sys.argv[1], crash=lambda: None)
rule = hooks.rules[0]
while True:
    hooks._count(rule)
"""


def _count_in(folder: Path) -> int:
    files = list(folder.glob("count-*"))
    assert len(files) == 1, files
    raw = files[0].read_bytes().decode().strip()
    return int(raw) if raw else 0


def test_the_nth_match_across_processes_fires_exactly_once(tmp_path: Path) -> None:
    fired: list[str] = []
    first, second = (faults.CrashHooks(faults.parse("after_email#3"), state_dir=tmp_path,
                                       crash=lambda: fired.append("crash")) for _ in range(2))
    for i in range(8):
        (first if i % 2 else second).reached("after_email", str(i), "deliver")
    assert fired == ["crash"]
    assert [c["rule"] for c in faults.crash_log(tmp_path)] == ["after_email#3"]
    assert _count_in(tmp_path) == 8


def test_a_process_killed_while_it_counts_never_makes_the_count_restart(tmp_path: Path) -> None:
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    seen = [0]
    for _ in range(15):
        child = subprocess.Popen([sys.executable, "-c", COUNTER, str(tmp_path)], env=env)
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("count-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 + rng.random() * 0.05)  # SIGKILL it somewhere in its loop
        child.send_signal(signal.SIGKILL)
        child.wait()
        now = _count_in(tmp_path)
        assert now >= seen[-1], f"the count went back from {seen[-1]} to {now}"
        seen.append(now)
    assert seen[-1] > 15  # every child counted
