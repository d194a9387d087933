"""`patchaas flower` watches a real run: the tasks of an execution show up with their names and the
execution id as argument."""

from __future__ import annotations

import httpx

from orchestrator.entrypoints.api import Patchaas
from orchestrator.settings import Settings
from simulation.mailsink import free_port
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import Cluster, active_executions, install_fleet, wait_until


def test_flower_shows_the_tasks_of_a_run(pg: str, redis_url: str, cluster: Cluster) -> None:
    specs = build_fleet_specs(4, 2, scenarios={Scenario.NORMAL: 2})
    install_fleet(pg, specs)
    port = free_port()
    cluster.env["FLOWER_UNAUTHENTICATED_API"] = "true"
    cluster.start("flower", "flower", "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def flower_up() -> bool:
        try:
            return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(flower_up, timeout=60, on_timeout=lambda: cluster.log("flower")[-2000:])
    cluster.start_worker("w1")
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package("OSD", [s.name for s in specs])
        wait_until(lambda: not active_executions(pg), timeout=90)
    finally:
        patching.close()
    ids = {a.execution_id for a in answers}

    def seen() -> bool:
        tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
        advanced = {str(t.get("args")) for t in tasks.values() if t.get("name") == "patchaas.advance"}
        return all(any(i in args for args in advanced) for i in ids)

    wait_until(seen, timeout=30, on_timeout=lambda: str(httpx.get(f"{base}/api/tasks", timeout=5).json())[:2000])
