"""Traces, when the standard OTEL_* variables ask for them (here: the SDK's in-memory exporter): a span per
REST request (continuing the caller's `traceparent`), per step, per fleet call and per SMTP send; the request
that queued a run is the parent of the run's first step (its traceparent stored with the execution). Without
them, nothing of the OpenTelemetry SDK is ever imported, and the worker's code imports no OpenTelemetry at
all (FastAPI itself imports opentelemetry-api: only the API process has it, and never the SDK)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from orchestrator.entrypoints.rest import create_app
from orchestrator.observability import tracing
from orchestrator.persistence import models
from orchestrator.services import auth
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from tests import support
from tests.integration.services.test_windows import make_world

ROOT = Path(__file__).resolve().parents[3]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[object]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    yield exporter
    tracing.reset()


def test_a_request_its_runs_steps_fleet_calls_and_emails_are_one_trace(pg: str, spans: object) -> None:
    specs = build_fleet_specs(9, 1, scenarios={Scenario.NORMAL: 1})
    world = make_world(pg, specs, simulated.SimTimings.instant())
    accounts = auth.AuthService(world.container.sessions, world.clock, timedelta(days=1),
                                hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.create_user("jane", "OSD", ["ServerAdmin"], "a long enough password")
    with TestClient(create_app(world.container, auth_service=accounts)) as client:
        token = client.post("/v2/authentication/login",
                            json={"username": "jane", "password": "a long enough password"}).json()["bearerToken"]
        answer = client.post("/v2/operations/osd/servers/executePackage",
                             headers={"Authorization": f"Bearer {token}", "traceparent": CALLER},
                             json={"servers": [specs[0].name], "package": {"packageId": DEFAULT_PACKAGE_ID}})
        assert answer.status_code == 200, answer.text
    support.drive(world.container, world.dispatcher, world.clock)
    [row] = support.executions(world.container)
    assert row.state == "completed" and row.trace_parent and row.trace_parent.split("-")[1] == TRACE_ID

    finished = spans.get_finished_spans()  # type: ignore[attr-defined]
    by_name = {s.name: s for s in finished}
    request = by_name["POST /v2/operations/{alias}/servers/executePackage"]
    assert format(request.context.trace_id, "032x") == TRACE_ID  # the caller's trace, continued
    assert request.attributes["http.response.status_code"] == 200
    steps = [s for s in finished if s.name.startswith("step ")]
    first = min(steps, key=lambda s: s.start_time)
    assert first.name == "step inspect_server" and first.parent.span_id == request.context.span_id
    assert format(first.context.trace_id, "032x") == TRACE_ID
    later = [s for s in steps if s is not first]
    assert later and all(s.context.trace_id != request.context.trace_id for s in later)  # a run is many traces
    fleet_calls = [s for s in finished if s.name.startswith("fleet ")]
    assert {"fleet status", "fleet set_maintenance", "fleet invoke_package", "fleet cycle_result"} <= {
        s.name for s in fleet_calls}
    step_ids = {s.context.span_id for s in steps}
    assert all(s.parent is not None and s.parent.span_id in step_ids for s in fleet_calls)
    assert sum(s.name == "smtp send" for s in finished) == 2  # the start and the end email
    world.container.close()


def _run(code: str, **env: str) -> str:
    clean = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


WORK = """
import sys
from orchestrator import bootstrap
from orchestrator.engine import rounds
from orchestrator.settings import Settings
from workers.app import create_app
from tests.support import ListDispatcher
from simulation.fleet import SimulatedFleet
from simulation.store import MemoryStore
fleet = SimulatedFleet.create([], MemoryStore())
container = bootstrap.build(Settings(database_url='sqlite:///{db}'), dispatcher=ListDispatcher(), fleet=fleet)
container.engine.advance('VA1-000000'); container.engine.tick()
print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))
"""


def test_without_otel_variables_the_worker_imports_no_opentelemetry(tmp_path: Path) -> None:
    from orchestrator.persistence import migrate

    migrate.upgrade(f"sqlite:///{tmp_path / 'w.db'}")
    assert _run(WORK.format(db=tmp_path / "w.db")) == "[]"
    assert "opentelemetry.sdk" in _run(WORK.format(db=tmp_path / "w.db") + "\nfrom orchestrator.observability "
                                       "import tracing\nwith tracing.span('x'): pass\nprint(list(sys.modules))",
                                       OTEL_TRACES_EXPORTER="console")


def test_without_otel_variables_the_api_never_imports_the_sdk(tmp_path: Path) -> None:
    from orchestrator.persistence import migrate

    migrate.upgrade(f"sqlite:///{tmp_path / 'a.db'}")
    code = f"""
import sys
from fastapi.testclient import TestClient
from orchestrator import bootstrap
from orchestrator.entrypoints.rest import create_app
from orchestrator.settings import Settings
from tests.support import ListDispatcher
container = bootstrap.build(Settings(database_url='sqlite:///{tmp_path / "a.db"}'), dispatcher=ListDispatcher())
with TestClient(create_app(container)) as client:
    assert client.get('/healthz').status_code == 200
    assert client.post('/v2/authentication/login', json={{'username': 'x', 'password': 'y'}}).status_code == 400
print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))
"""
    assert _run(code) == "[]"


@pytest.mark.parametrize("env, on", [
    ({}, False), ({"OTEL_TRACES_EXPORTER": "none"}, False), ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_only_the_standard_variables_turn_traces_on(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def test_the_trace_column_is_in_the_models() -> None:
    assert "trace_parent" in models.Execution.__table__.c
