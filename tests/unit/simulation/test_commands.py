"""The scripted commands of the simulated servers (simulation/commands.py), and the fleet's `run_command`: once
per key, a repeat answers the first run, an unreachable server is a transient error."""

from __future__ import annotations

import pytest

from orchestrator.ports import FleetError
from simulation import commands
from simulation import fleet as simulated
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs


@pytest.mark.parametrize(("command", "code", "output"), [
    ("echo a; echo b", 0, "a\nb"),
    ("echo before\nfail it broke\necho never", 1, "before\nit broke"),
    ("exit 7", 7, ""),
    ("systemctl restart app", 0, "ran: systemctl restart app"),
])
def test_each_statement_does_what_the_language_says(command: str, code: int, output: str) -> None:
    result, _ = commands.run(command, 60)
    assert (result.exit_code, result.output, result.timed_out) == (code, output, False)


def test_a_command_longer_than_its_timeout_is_stopped() -> None:
    result, took = commands.run("echo start; sleep 30; sleep 40; echo end", 60)
    assert result.timed_out and not result.ok and result.output == "start" and took == 60


def test_the_fleet_runs_a_command_once_per_key() -> None:
    now = [1_800_000_000.0]
    specs = build_fleet_specs(2, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, timings=simulated.SimTimings(reboot_seconds=30), seed=2,
                                            clock=lambda: now[0])
    server = specs[0].name
    first = fleet.run_command(server, "k1", "echo one", 10)
    assert fleet.run_command(server, "k1", "echo something else", 10) == first
    assert fleet.command_result(server, "k1") == first and fleet.command_result(server, "k2") is None
    assert [e.key for e in fleet.effects(server, EffectKind.COMMAND)] == ["k1"]
    fleet.reboot(server, "r1")  # down for 30 s of the fleet's clock
    with pytest.raises(FleetError, match="not reachable"):
        fleet.run_command(server, "k2", "echo two", 10)
