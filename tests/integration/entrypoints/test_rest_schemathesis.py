"""A property-based run over /openapi.json (schemathesis) against the ASGI app on real PostgreSQL, with a
valid bearer token: no answer is a 5xx, every answer conforms to the document (status, content type,
headers, body schema), and input that breaks the document is refused with a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import schemathesis
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

from orchestrator.bootstrap import Container
from orchestrator.domain.rate_control import RateControl
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import db
from orchestrator.services import auth, inventory
from orchestrator.services.hooks import HookService
from orchestrator.services.webhooks import WebhookService, WebhookSpec
from orchestrator.services.window_specs import WindowSpec
from orchestrator.services.windows import WindowService
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.hooks import HookSpec
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PASSWORD = "correct horse battery"
EXAMPLES = 25
OPERATIONS = [
    ("POST", "/v2/authentication/login"),
    ("POST", "/v2/authentication/logout"),
    ("POST", "/v2/operations/{alias}/servers/executePackage"),
    ("POST", "/v2/operations/{alias}/groups/executePackage"),
    ("GET", "/v2/operations/{alias}/status/{statusId}"),
    ("GET", "/v2/servers/{alias}/{serverId}"),
    ("GET", "/v2/groups/{alias}/{groupId}"),
    ("GET", "/rest/servers/{alias}/server/{server}/patch"),
    ("GET", "/rest/servers/{alias}/server/{server}/patch/{execution_id}"),
    ("POST", "/rest/servers/{alias}/server/{server}/patch/{execution_id}/cancel"),
    ("POST", "/v2/patchaas/{alias}/windows"),
    ("GET", "/v2/patchaas/{alias}/windows"),
    ("GET", "/v2/patchaas/{alias}/windows/{windowId}"),
    ("PATCH", "/v2/patchaas/{alias}/windows/{windowId}"),
    ("DELETE", "/v2/patchaas/{alias}/windows/{windowId}"),
    ("GET", "/v2/patchaas/{alias}/rollouts/{rolloutId}"),
    ("POST", "/v2/patchaas/executions/{execution_id}/reports"),
    ("PUT", "/v2/patchaas/{alias}/ssh-hosts/{serverId}"),
    ("GET", "/v2/patchaas/{alias}/ssh-hosts"),
    ("GET", "/v2/patchaas/{alias}/ssh-hosts/{serverId}"),
    ("DELETE", "/v2/patchaas/{alias}/ssh-hosts/{serverId}"),
    ("GET", "/v2/patchaas/{alias}/compliance"),
    ("POST", "/v2/patchaas/{alias}/webhooks"),
    ("GET", "/v2/patchaas/{alias}/webhooks"),
    ("GET", "/v2/patchaas/{alias}/webhooks/{webhookId}"),
    ("DELETE", "/v2/patchaas/{alias}/webhooks/{webhookId}"),
    ("POST", "/v2/patchaas/{alias}/webhooks/{webhookId}/enable"),
    ("GET", "/v2/patchaas/{alias}/events"),
    ("PUT", "/v2/patchaas/{alias}/hooks/{name}"),
    ("GET", "/v2/patchaas/{alias}/hooks"),
    ("GET", "/v2/patchaas/{alias}/hooks/{name}"),
    ("DELETE", "/v2/patchaas/{alias}/hooks/{name}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
]


@dataclass(frozen=True)
class World:
    """The app's container and path values that name real things of account OSD."""

    container: Container
    real: dict[str, str]


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    """Account OSD with nested groups, six servers, a finished execution on VA1OSDPATCH01 and a running one."""
    clock = support.FakeClock()
    specs = build_fleet_specs(9, 6, scenarios={Scenario.NORMAL: 4, Scenario.BROKEN_KB: 1,
                                                         Scenario.UNSUPPORTED_OS: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=9,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    wired = support.make_container(support.test_settings(pg), fleet, clock, dispatcher, mail.MemoryMailer())
    with wired.sessions.begin() as session:
        inventory.ensure_account(session, "OSD", "OSD", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, "OSD", "va1-0001", "root")
        inventory.ensure_group(session, "OSD", "va1-0002", "child", "va1-0001")
        inventory.register_servers(session, "OSD", (
            inventory.ServerSpec(s.name, s.os_type, s.power_state.value, "va1-0001" if i < 3 else "va1-0002")
            for i, s in enumerate(specs)
        ))
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID)
    finished = wired.service.execute_package("OSD", ["VA1OSDPATCH01"], package, "test")[0].execution_id
    support.drive(wired, dispatcher, clock)
    running = wired.service.execute_package("OSD", ["VA1OSDPATCH02"], package, "test")[0].execution_id
    assert finished and running
    window = WindowService(wired.service).create("OSD", WindowSpec(name="nightly", groups=["va1-0001"],
                                                                   cron="0 22 * * *"), "test")
    held = wired.service.execute_package("OSD", ["VA1OSDPATCH03"], package, "test", RateControl.parse(1, 0))
    rollout = wired.service.rollout_of("OSD", held[0].execution_id or "")
    hook = WebhookService(wired.sessions, clock, None).create("OSD", WebhookSpec(
        name="ops", url="https://hooks.example.com/x", secret_ref="env:OPS_HOOK_SECRET"), "test")
    real = {"alias": "OSD", "server": "VA1OSDPATCH01", "serverId": "VA1OSDPATCH02", "groupId": "va1-0001",
            "statusId": finished.lower(), "execution_id": finished, "running": running,
            "windowId": str(window.id), "rolloutId": str(rollout), "webhookId": str(hook.id), "name": "drain"}
    HookService(wired.sessions, clock, None).put("OSD", "drain", HookSpec.model_validate(
        {"kind": "command", "points": ["pre_maintenance"], "command": "echo drained"}), "test")
    yield World(wired, real)
    wired.close()


@pytest.fixture
def accounts(world: World) -> auth.AuthService:
    """Authentication with a cheap argon2 cost: the run logs in (and fails to) many times."""
    container = world.container
    return auth.AuthService(container.sessions, container.service.clock, timedelta(days=14),
                            hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def token(accounts: auth.AuthService) -> str:
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    return accounts.login("jane", PASSWORD).token


@pytest.fixture
def api_schema(world: World, accounts: auth.AuthService) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(world.container, auth_service=accounts))


def test_the_run_covers_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    documented = {(op.method.upper(), op.path) for op in operations}
    assert documented == set(OPERATIONS)


# "real" needs a path naming things; "negative" needs something to break (a path parameter or a body)
RUNS = [(m, p, mode) for m, p in OPERATIONS for mode in ("positive", "negative", "real")
        if mode == "positive" or "{" in p or (mode == "negative" and m != "GET")]


@pytest.mark.parametrize("method,path,mode", RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in RUNS])
def test_no_server_errors_and_every_answer_conforms(
    api_schema: schemathesis.BaseSchema, world: World, token: str, method: str, path: str, mode: str
) -> None:
    """Generated values everywhere (positive and negative), and generated bodies and queries on paths that
    name real things ("real": so successful answers are checked against the document too)."""
    operation = api_schema[path][method]
    generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
    names = {p.name for p in operation.path_parameters}
    if method == "POST" and path.endswith("/cancel"):
        pinned = world.real | {"server": "VA1OSDPATCH02", "execution_id": world.real["running"]}
    else:
        pinned = world.real
    fixed = {k: v for k, v in pinned.items() if k in names} if mode == "real" else None

    @given(case=operation.as_strategy(generation_mode=generation, path_parameters=fixed))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        package = case.body.get("package") if isinstance(case.body, dict) else None
        if mode == "real" and isinstance(package, dict):
            package["packageId"] = DEFAULT_PACKAGE_ID  # past the whole-request refusal
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    run()
