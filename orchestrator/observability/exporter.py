"""The Prometheus exporter of a worker or beat: prometheus-client's multiprocess mode, so that every process
of a prefork pool is counted, served on PATCHAAS_METRICS_PORT by the parent process.

`prepare` runs first, before any metric is created: it points PROMETHEUS_MULTIPROC_DIR at a directory of
this process tree (the operator's, wiped, or a fresh temporary one, removed at exit) and makes
prometheus-client use it. `serve` starts the HTTP exporter over that directory, plus any collectors of the
process (beat's fleet-level gauges).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(process: str) -> Path:
    """Multiprocess mode for this process and its children; the directory it writes to."""
    given = os.environ.get(ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # a previous run's counts would be added to ours
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix=f"patchaas-metrics-{process}-"))
        os.environ[ENV] = str(directory)
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:  # not in a forked child that exits: the parent still serves them
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case prometheus-client was imported before the variable
    return directory


def registry(collectors: Iterable[Any] = ()) -> Any:
    """A registry of every process's metrics in the multiprocess directory, and `collectors`."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    found = CollectorRegistry()
    if os.environ.get(ENV):
        MultiProcessCollector(found)
    else:
        from prometheus_client import REGISTRY

        found = REGISTRY
    for collector in collectors:
        found.register(collector)
    return found


def serve(port: int, address: str = "127.0.0.1", collectors: Iterable[Any] = ()) -> Any:
    """Serve the metrics on http://address:port/metrics (a daemon thread of this process)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=registry(collectors))
    log.info("metrics on http://%s:%d/metrics (multiprocess directory %s)", address, port, os.environ.get(ENV))
    return server


def mark_dead(pid: int) -> None:
    """A pool process exited: drop its live gauges (counters and histograms keep counting what it did)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
