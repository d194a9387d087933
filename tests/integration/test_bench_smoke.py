"""Every benchmark of bench/ runs at a tiny size and produces its numbers. No timings are asserted: the
numbers live in docs/BENCHMARKS.md, measured on a known machine."""

from __future__ import annotations

import shutil

import pytest

from bench import api, control_plane, enqueue, fleet_scale, transitions
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _common(redis_url: str) -> list[str]:
    return ["--tiny", "--pg-admin-url", PG_ADMIN_URL, "--redis-url", redis_url]


def test_transitions_bench_runs(redis_url: str) -> None:
    result = transitions.main([*_common(redis_url), "--pgbench-seconds", "1"])
    product = result["patchaas"]
    assert product["events"] > 0 and product["rate"] > 0
    assert set(product["states"]) == {"completed"}
    assert result["chain"]["hops"] == product["events"] and result["chain"]["rate"] > 0
    if shutil.which("pgbench"):
        assert result["pgbench"]["tps"] > 0
    assert "transitions" in result["table"]
    # metrics off and on in the same run (bench/metrics_switch.py): on, the worker's exporter counted every step
    runs = dict(result["runs"])
    assert set(runs) == {"off", "on"} and runs["off"]["events"] == runs["on"]["events"]
    assert runs["on"]["metrics"]["steps"] >= runs["on"]["events"] and not runs["off"]["metrics"]
    assert "on ÷ off" in result["cost"]


def test_fleet_scale_bench_runs(redis_url: str) -> None:
    result = fleet_scale.main([*_common(redis_url), "--poll", "0.5", "--in-process", "3"])
    fleet = result["fleet"]
    assert fleet["states"] == {"completed": 20}
    assert fleet["steps"] >= 20 * 4 and fleet["polls"] >= 20
    assert fleet["worker_rss"][1] > 0 and fleet["beat_rss"][1] > 0
    for label in ("one step per task", "batches"):
        assert result["statements"][label]["per_step"] > 0
    assert "executions" in result["plan"]
    runs = dict(result["runs"])
    assert set(runs) == {"off", "on"} and runs["on"]["metrics"]["steps"] >= runs["on"]["steps"] / 2
    assert "on ÷ off, in process, batches" in result["cost"]


def test_api_bench_runs(redis_url: str) -> None:
    result = api.main(["--tiny", "--pg-admin-url", PG_ADMIN_URL, "--seconds", "1", "--connections", "4",
                       "--workers", "1"])
    assert len(result["results"]) == 5  # the trivial endpoint, two JSON answers, two console pages
    assert all(measured["non_2xx"] == 0 for measured in result["one_client"].values())
    for measured in result["results"].values():
        assert measured["requests"] > 0 and measured["rps"] > 0 and measured["non_2xx"] == 0
    assert all(count >= 0 for count in result["statements"].values())


def test_enqueue_bench_runs(redis_url: str) -> None:
    result = enqueue.main(_common(redis_url))
    assert result["queued"] == 20 and result["outbox"] == 20
    assert result["seconds"] > 0 and result["bulk_seconds"] > 0
    assert result["one_by_one"]["queued"] == 20


def test_control_plane_bench_runs(redis_url: str) -> None:
    result = control_plane.main([*_common(redis_url), "--skip-baseline"])
    (run,) = result["runs"]
    assert run["states"] == {"completed": 4} and run["executions"] == 4
    assert run["accepted"] >= 4 * 10 and run["bound"] == run["accepted"] / run["rate"]
    assert run["makespan"] > 0 and run["ratio"] > 0
    assert "makespan ÷ bound" in result["table"]
