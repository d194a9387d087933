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


# --- observability (issue 15): Prometheus and Grafana, provisioned from deploy/ ---------------------------------

def _mounts(service: str) -> dict[str, str]:
    """container path -> host path (relative to the repository) of a service's bind mounts."""
    found = {}
    for volume in COMPOSE["services"][service].get("volumes", []):
        host, container, *_ = volume.split(":")
        found[container] = host
    return found


def test_prometheus_and_grafana_are_provisioned_from_files_that_exist() -> None:
    prometheus, grafana = _mounts("prometheus"), _mounts("grafana")
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert grafana["/var/lib/grafana/dashboards/patchaas.json"] == "./deploy/grafana/patchaas.json"
    for host in [*prometheus.values(), *grafana.values()]:
        assert (ROOT / host).exists(), host
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # the path it is mounted at
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/patchaas.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in COMPOSE["services"]["prometheus"]["ports"]


def test_prometheus_scrapes_the_api_every_worker_and_beat_where_they_serve() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = int(COMPOSE["x-patchaas-env"]["PATCHAAS_METRICS_PORT"])
    assert COMPOSE["x-patchaas-env"]["PATCHAAS_METRICS_ADDRESS"] == "0.0.0.0"  # reachable from prometheus
    assert jobs["patchaas-api"]["static_configs"][0]["targets"] == ["api:8080"]
    [dns] = jobs["patchaas-worker"]["dns_sd_configs"]  # every replica of `worker`
    assert dns["names"] == ["worker"] and dns["port"] == port and OURS["worker"]["deploy"]["replicas"] >= 1
    assert jobs["patchaas-beat"]["static_configs"][0]["targets"] == [f"beat:{port}"]
