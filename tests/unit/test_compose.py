"""docker-compose.yml stays true to the code: every service's command is a patchaas command that accepts its
options, every PATCHAAS_ variable is a setting, and Redis runs as durability needs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.entrypoints.cli.main import app
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OURS = {name: svc for name, svc in COMPOSE["services"].items() if svc.get("build")}


@pytest.mark.parametrize("name", sorted(n for n, s in OURS.items() if s.get("command")))
def test_each_service_command_is_a_patchaas_command_with_valid_options(name: str) -> None:
    command = OURS[name]["command"]
    # an unknown command or option fails the parse even with --help (exit 2)
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, f"{name}: `patchaas {' '.join(command)}` is not valid: {result.output}"


def test_every_patchaas_variable_is_a_setting() -> None:
    fields = {f"PATCHAAS_{field.upper()}" for field in Settings.model_fields}
    env = COMPOSE["x-patchaas-env"]
    unknown = sorted(set(env) - fields)
    assert not unknown, f"variables no setting reads: {unknown}"
    for name, svc in OURS.items():
        assert svc.get("environment") == env, f"{name} does not use the shared environment"


def test_redis_keeps_its_queue_and_never_evicts() -> None:
    command = " ".join(COMPOSE["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_the_stack_has_everything_a_deployment_runs() -> None:
    commands = {svc["command"][0] for svc in OURS.values() if svc.get("command")}
    assert {"db", "worker", "beat", "api", "flower", "simulator"} <= commands
    assert COMPOSE["services"]["beat"].get("deploy", {}).get("replicas", 1) == 1  # exactly one beat


def test_the_api_health_check_asks_a_route_the_api_serves() -> None:
    import re

    from orchestrator.entrypoints.rest import health

    check = " ".join(COMPOSE["services"]["api"]["healthcheck"]["test"])
    [path] = re.findall(r"http://127\.0\.0\.1:8080(/[a-z]+)", check)
    assert path in {route.path for route in health.router.routes}  # type: ignore[attr-defined]
    assert "--port" in OURS["api"]["command"] and "8080" in OURS["api"]["command"]
