"""Running the simulated CLC API: the fleet it serves (`fleet_for`), and uvicorn, in this process's
foreground (`serve`) or in a background thread (`running`), on an h11 protocol that lets the fault injector
drop connections (`DroppableH11Protocol`)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from simulation.clc_faults import TRANSPORT_STATE_KEY
from simulation.clc_reporter import Reporter
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.specs import build_fleet_specs
from simulation.store import FleetStore, MemoryStore, SqlStore


class DroppableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands each request its connection's transport (in `scope["state"]`),
    so the fault injector can close the socket without answering."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, TRANSPORT_STATE_KEY: transport}


def fleet_for(
    state_url: str | None,
    seed: int,
    servers: int | None,
    alias: str = "OSD",
    timings: SimTimings | None = None,
) -> SimulatedFleet:
    """The fleet to serve: attached to the shared store at `state_url` (a new one of `servers` servers
    replaces what it holds when `servers` is given), or in memory (`servers`, default 20)."""
    timings = timings or SimTimings.instant()
    store: FleetStore = SqlStore(state_url) if state_url else MemoryStore()
    if servers is None and state_url:
        return SimulatedFleet.load(store, timings, seed)
    specs = build_fleet_specs(seed, 20 if servers is None else servers, alias=alias)
    return SimulatedFleet.create(specs, store, timings, seed=seed, reset=True)


def _config(app: ASGIApp, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=DroppableH11Protocol,
        ws="none",
        log_level=log_level,
        access_log=False,
        lifespan="off",
    )


def serve(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> None:
    """Serve `app` until interrupted, on the h11 protocol that can drop connections."""
    try:
        uvicorn.Server(_config(app, host, port, log_level)).run()
    finally:
        _close_reporter(app)


def _close_reporter(app: ASGIApp) -> None:
    reporter = getattr(getattr(app, "state", None), "reporter", None)
    if isinstance(reporter, Reporter):
        reporter.close()


@contextmanager
def running(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` in a background thread of this process (tests, the demo); yields its base URL."""
    # bind and listen before the thread starts: connections queue in the backlog until uvicorn accepts
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, bound, log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="clc-simulator", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        _close_reporter(app)
