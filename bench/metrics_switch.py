"""The metrics on/off switch of bench/transitions.py and bench/fleet_scale.py (issue 15, "Cost"): each runs
the product with metrics off and on in the same run and reports the ratio (docs/BENCHMARKS.md, "Cost of
observability").

- **on** is what a deployment runs: PATCHAAS_METRICS_ENABLED=true and a PATCHAAS_METRICS_PORT for the worker
  and for beat (so prometheus-client's multiprocess mode, every pool process writing its own file, the
  exporters up; the worker's is scraped once at the end, and beat's fleet-level query runs once then);
- **off** is PATCHAAS_METRICS_ENABLED=false and no port: no metric, no step log context, no exporter.
"""

from __future__ import annotations

import argparse
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

ORDERS = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", choices=sorted(ORDERS), default="both",
                        help="run the product with metrics off and on (both, the default), or only one")
    parser.add_argument("--metrics-repeat", type=int, default=1, metavar="N",
                        help="with --metrics both: N pairs, in the order off-on, on-off, … (drift cancels out)")


def modes(choice: str, repeat: int = 1) -> list[str]:
    if choice != "both":
        return ORDERS[choice]
    order: list[str] = []
    for i in range(max(1, repeat)):
        order += ["off", "on"] if i % 2 == 0 else ["on", "off"]
    return order


def env(mode: str) -> dict[str, str]:
    return {"PATCHAAS_METRICS_ENABLED": "true" if mode == "on" else "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(procs: Any, start_worker: Callable[[], None], start_beat: Callable[[], None]) -> str | None:
    """Start the worker and beat (`procs`: bench.common.Processes), each with its own metrics port when the
    environment says metrics are on; the worker exporter's URL (None when off)."""
    if procs.env.get("PATCHAAS_METRICS_ENABLED", "true") == "false":
        procs.env.pop("PATCHAAS_METRICS_PORT", None)
        start_worker()
        start_beat()
        return None
    worker, beat = _free_port(), _free_port()
    procs.env["PATCHAAS_METRICS_PORT"] = str(worker)
    start_worker()
    procs.env["PATCHAAS_METRICS_PORT"] = str(beat)
    start_beat()
    procs.env["PATCHAAS_BENCH_BEAT_METRICS"] = f"http://127.0.0.1:{beat}/metrics"
    return f"http://127.0.0.1:{worker}/metrics"


def steps_counted(url: str | None, beat_url: str | None = None) -> dict[str, float]:
    """What the exporters say (a scrape as Prometheus would do it): steps counted, and the scrapes' times."""
    if url is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for name, target in (("worker", url), ("beat", beat_url)):
        if not target:
            continue
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(target, timeout=30) as answer:
                text = answer.read().decode()
        except OSError:
            continue
        out[f"{name}_scrape_seconds"] = time.perf_counter() - started
        for family in text_string_to_metric_families(text):
            if family.name == "patchaas_steps":
                out["steps"] = sum(s.value for s in family.samples if s.name == "patchaas_steps_total")
    return out


def reset_runs(url: str) -> None:
    """Forget the runs of the previous mode (executions and all that hangs off them; the bench's claim log)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE executions CASCADE")
        if conn.execute(sa.text("SELECT to_regclass('bench_claims')")).scalar() is not None:
            conn.exec_driver_sql("TRUNCATE bench_claims")
    engine.dispose()


def ratio(on: float, off: float) -> str:
    return f"{on / off:.3f}" if off else "n/a"


def overhead_per_step(steps: int = 10_000) -> dict[str, float]:
    """The telemetry's own CPU per step, in this process, in multiprocess mode as a worker runs it (its values
    in mmap files): a single step's watch (log context, outcome, duration) with two metered fleet calls, and a
    batch step's (context while it runs, outcome at the save), each against the off switch; µs per step."""
    import os

    from orchestrator.observability import exporter

    given = os.environ.get(exporter.ENV)
    if not given:
        exporter.prepare("bench")  # (processes started later must not inherit it: restored below)
    from orchestrator.domain import machine
    from orchestrator.observability import telemetry

    class Driver:
        def status(self, server: str) -> None:
            return None

        def reboot(self, server: str, key: str) -> None:
            return None

    view = machine.ExecutionView(id="VA1-000001", server="S1", state=machine.State.REBOOTING, account="OSD")
    command, event = machine.RebootServer("k"), machine.RebootRequested("b")

    def single(t: Any) -> float:
        fleet = t.fleet(Driver(), "simulated")
        started = time.perf_counter()
        for _ in range(steps):
            with t.step() as watch:
                watch.begin(view, command)
                fleet.status("S1")
                fleet.reboot("S1", "k")
                watch.event, watch.result = event, "advanced"
        return (time.perf_counter() - started) / steps * 1e6

    class Step:
        def __init__(self) -> None:
            self.view, self.command, self.event, self.error, self.conflict = view, "RebootServer", event, None, False
            self.started = time.perf_counter()

    def batch(t: Any) -> float:
        fleet = t.fleet(Driver(), "simulated")
        round_of = [Step() for _ in range(100)]
        work = t.in_step(lambda s: (fleet.status("S1"), fleet.reboot("S1", "k")))
        started = time.perf_counter()
        for _ in range(steps // 100):
            for s in round_of:
                work(s)
            t.batch_done(round_of, {view.id})
        return (time.perf_counter() - started) / steps * 1e6

    on = telemetry.Telemetry()
    single(on), batch(on)  # warm: series created, files opened
    out = {}
    for name, fn in (("single", single), ("batch", batch)):
        off_us = min(fn(telemetry.NULL_TELEMETRY) for _ in range(3))
        on_us = min(fn(on) for _ in range(3))
        out[f"{name}_off_us"], out[f"{name}_on_us"], out[f"{name}_cost_us"] = off_us, on_us, on_us - off_us
    if not given:  # back to single-process values: later metrics in this process (tests) must not need the dir
        os.environ.pop(exporter.ENV, None)
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return out


def overhead_row(per_transition_ms: float) -> list[Any]:
    """A cost table's row: the telemetry's own CPU per step, against the CPU a transition took."""
    cost = overhead_per_step()
    share = cost["single_cost_us"] / (per_transition_ms * 1000) if per_transition_ms else 0.0
    return [f"telemetry's own CPU per step (in process, multiprocess mode): {cost['single_cost_us']:.1f} µs "
            f"single, {cost['batch_cost_us']:.1f} µs batch = {share:.1%} of {per_transition_ms:.2f} ms of worker "
            "CPU per transition"]


if __name__ == "__main__":  # .venv/bin/python -m bench.metrics_switch
    for key, value in overhead_per_step().items():
        print(f"{key:16} {value:8.2f}")
