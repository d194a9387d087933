"""A simulated fleet of Windows Server 2012 / 2012 R2 machines that implements the `Fleet` protocol.

Deterministic from a seed, driven by an injected clock (nothing sleeps, nothing runs in the background:
reboots and package runs complete lazily when a later call sees the clock past their end), and recording
every side effect it receives so tests can assert each happened exactly once.

All mutable state lives in a store (simulation/store.py): `MemoryStore` for one process, `SqlStore` when
several processes (the workers of an end-to-end test) must share one fleet. Every call runs in one store
transaction that locks the server it touches, so concurrent callers serialize per server. What a server is
lives in simulation/specs.py, how its state changes (boots, searches, installs) in simulation/server_state.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.ports import FleetError, FleetRefused
from schemas import health
from schemas.fleet import (
    CycleReport,
    CycleState,
    HeartbeatReport,
    PackageRun,
    PowerState,
    ResultCode,
    ServerStatus,
    SettleStatus,
)
from schemas.hooks import CommandResult
from simulation import bulk_effects, commands
from simulation.catalog import is_supported
from simulation.package_run import HRESULT_ALL_FAILED, run_cycle
from simulation.records import Document, Effect, EffectKind
from simulation.server_state import ServerState, advance, search
from simulation.specs import Scenario, SimServerSpec
from simulation.store import FleetStore, MemoryStore, StoreSession

__all__ = ["HRESULT_ALL_FAILED", "SimTimings", "SimulatedFleet"]


@dataclass(frozen=True)
class SimTimings:
    """How long the simulated operations take, in seconds of the injected clock."""

    reboot_seconds: float = 0.0
    package_seconds: float = 0.0
    power_seconds: float = 0.0
    configure_seconds: float = 0.0  # CONFIGURING_UPDATES: still configuring updates this long after each boot

    @classmethod
    def instant(cls) -> SimTimings:
        """Everything completes as soon as the clock is read again (unit tests)."""
        return cls(0.0, 0.0, 0.0)

    @classmethod
    def demo(cls) -> SimTimings:
        """Short but visible waits (the `patchaas demo` fleet)."""
        return cls(reboot_seconds=1.5, package_seconds=1.0, power_seconds=1.0, configure_seconds=2.0)


# --- the fleet ---------------------------------------------------------------------------------

_PACKAGE = "package"


class SimulatedFleet:
    """Simulated Windows servers behind the `Fleet` protocol.

    `create(specs, ...)` writes a fleet into a store; `SimulatedFleet(store, ...)` (or `load`) attaches to
    one that exists. The seed given to `create` decides the simulation (which "can request" updates ask
    for a reboot); the seed given to the constructor seeds this instance's transient control-plane errors.
    """

    def __init__(
        self,
        store: FleetStore | None = None,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
    ) -> None:
        if not 0.0 <= transient_error_rate <= 1.0:
            raise ValueError(f"transient_error_rate {transient_error_rate} is not within [0, 1]")
        self.store: FleetStore = store if store is not None else MemoryStore()
        self.timings = timings if timings is not None else SimTimings.instant()
        self.clock = clock
        self.transient_error_rate = transient_error_rate
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        specs: Iterable[SimServerSpec],
        store: FleetStore | None = None,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
        reset: bool = False,
    ) -> SimulatedFleet:
        """Write `specs` into `store` (servers already there are kept unless `reset`) and attach to it. The
        servers are created now by `clock`: their updates' release dates (catalog ages) count back from it."""
        specs = list(specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError("two servers have the same name")
        store = store if store is not None else MemoryStore()
        epoch = clock()
        store.install([(s.name, s.to_doc(), ServerState.initial(s, seed, epoch).to_doc()) for s in specs], reset)
        return cls(store, timings, seed, clock, transient_error_rate)

    @classmethod
    def load(
        cls,
        store: FleetStore,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
    ) -> SimulatedFleet:
        """Attach to the fleet `store` holds (written earlier by `create`, maybe by another process)."""
        return cls(store, timings, seed, clock, transient_error_rate)

    # --- the Fleet protocol --------------------------------------------------------------------

    def status(self, server: str) -> ServerStatus:
        """The server's power state, maintenance flag, boot id and pending reboot."""
        self._maybe_fail()
        with self._server(server) as (_, spec, state, _now):
            return ServerStatus(
                name=spec.name,
                os_type=spec.os_type,
                power_state=state.power_state,
                in_maintenance=state.in_maintenance,
                up=state.up,
                boot_id=state.boot_id(spec.name),
                pending_reboot=state.pending_reboot,
            )

    def settled(self, server: str) -> SettleStatus:
        """Whether the server has finished servicing: a CONFIGURING_UPDATES server answers (new boot id) but is
        still configuring updates for `configure_seconds` after each boot."""
        self._maybe_fail()
        with self._server(server) as (_, spec, state, now):
            configuring = state.configuring(now)
            if state.configuring_until is not None and not configuring and state.up:
                state.configuring_until = None  # done: the next reboot configures again
            detail = ""
            if configuring:
                assert state.configuring_until is not None
                detail = (f"configuring updates: TrustedInstaller is busy, Component Based Servicing has a pending "
                          f"operation ({max(0.0, state.configuring_until - now):.0f}s left)")
            elif not state.up:
                detail = "not up"
            return SettleStatus(up=state.up, boot_id=state.boot_id(spec.name), idle=state.up and not configuring,
                                reboot_required=state.pending_reboot, detail=detail)

    def check_service(self, server: str, key: str, service: str | None, timeout: float) -> CommandResult:
        """An on-server health check of a service (orchestrator/engine/health_runs.py): running, unless the server is
        SERVICE_DOWN and rebooted after an install; not reachable while down."""
        self._maybe_fail()
        with self._server(server) as (_, spec, state, _now):
            if not state.up:
                raise FleetError(f"server {spec.name} is not reachable")
            return _service_state(state, service)

    def statuses(self, servers: Sequence[str]) -> dict[str, ServerStatus]:
        """`status` of many servers in one store transaction (one statement to read, one to write back the
        boots completed meanwhile); unknown servers are left out (their `status` raises FleetRefused)."""
        self._maybe_fail()
        many = getattr(self.store, "many", None)
        if many is None:  # a store without bulk reads: one session each
            found: dict[str, ServerStatus] = {}
            for server in servers:
                try:
                    found[server] = self.status(server)
                except FleetRefused:
                    continue
            return found
        answers: dict[str, ServerStatus] = {}
        with many(servers) as sessions:
            now = self.clock()
            for name, session in sessions.items():
                spec = SimServerSpec.from_doc(session.spec)
                state = ServerState.from_doc(session.state)
                advance(spec, state, now)
                session.state = state.to_doc()
                answers[name] = ServerStatus(
                    name=spec.name, os_type=spec.os_type, power_state=state.power_state,
                    in_maintenance=state.in_maintenance, up=state.up, boot_id=state.boot_id(spec.name),
                    pending_reboot=state.pending_reboot,
                )
        return answers

    def cycle_results(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CycleReport | None]:
        """`cycle_result` of many (server, key) pairs in one store transaction; unknown servers are left out
        (their `cycle_result` raises FleetRefused)."""
        self._maybe_fail()
        many = getattr(self.store, "many", None)
        if many is None:
            return {(server, key): self.cycle_result(server, key) for server, key in items}
        answers: dict[tuple[str, str], CycleReport | None] = {}
        with many([server for server, _ in items], [(server, _PACKAGE, key) for server, key in items]) as sessions:
            now = self.clock()
            for server, key in items:
                session = sessions.get(server)
                if session is None:
                    continue
                spec = SimServerSpec.from_doc(session.spec)
                state = ServerState.from_doc(session.state)
                advance(spec, state, now)
                session.state = state.to_doc()
                answers[(server, key)] = _report(session.op(_PACKAGE, key), key, now)
        return answers

    def perform_many(self, calls: Sequence[tuple[str, tuple[object, ...]]]) -> list[BaseException | None]:
        """Many effect calls (operation, arguments) in one store transaction, each as its own call would do
        it; their outcomes in order: None, or the exception it raised (simulation/bulk_effects.py)."""
        return bulk_effects.perform_many(self, calls)

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        """Set the maintenance flag; every call is recorded (the control plane takes it even if unchanged)."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            state.in_maintenance = on
            kind = EffectKind.MAINTENANCE_ON if on else EffectKind.MAINTENANCE_OFF
            session.record(Effect(spec.name, kind, key, None, now))

    def power_on(self, server: str, key: str) -> None:
        """Start a stopped or paused server: started now, up (with a new boot id) after `power_seconds`."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.POWER_ON, key) is not None:
                return
            session.put_op(EffectKind.POWER_ON, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.POWER_ON, key, None, now))
            if state.power_state is not PowerState.STARTED:
                state.power_state = PowerState.STARTED
                state.booting_until = now + self.timings.power_seconds

    def power_off(self, server: str, key: str) -> None:
        """Stop the server at once."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.POWER_OFF, key) is not None:
                return
            session.put_op(EffectKind.POWER_OFF, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.POWER_OFF, key, None, now))
            state.power_state = PowerState.STOPPED
            state.booting_until = None

    def reboot(self, server: str, key: str) -> None:
        """Reboot: down now, back after `reboot_seconds` with a new boot id and pending installs committed."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.REBOOT, key) is not None:
                return
            if state.power_state is not PowerState.STARTED:
                raise FleetError(f"server {spec.name} is {state.power_state.value}: cannot reboot it")
            session.put_op(EffectKind.REBOOT, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.REBOOT, key, None, now))
            if spec.scenario is Scenario.NEVER_RETURNS:
                state.stuck = True
            state.booting_until = now + self.timings.reboot_seconds
            if spec.scenario is Scenario.CONFIGURING_UPDATES:  # answers after the boot, configures a while longer
                state.configuring_until = state.booting_until + self.timings.configure_seconds

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        """Run one cycle as the package does (simulation/package_run.py): search, apply the run's selection
        (schemas/selection.py; release age and MSRC severity as of the fleet's clock now: an update it does not
        admit is only listed in the report's `excluded`), check what blocks an install, install, and keep the
        report under `key`."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(_PACKAGE, key) is not None:
                return
            if not is_supported(spec.os_type):
                raise FleetRefused(
                    f"server {spec.name} runs {spec.os_type}: the update package does not support it"
                )
            if not state.up:
                raise FleetError(f"server {spec.name} is not reachable")
            done = run_cycle(spec, state, run, key, now, self.timings.package_seconds)
            for kb in done.installed:
                session.record(Effect(spec.name, EffectKind.INSTALL, key, kb, now))
            session.put_op(
                _PACKAGE,
                key,
                {
                    "cycle": run.cycle,
                    "started_at": now,
                    "finish_at": done.finish_at,
                    "heartbeat_seconds": done.heartbeat_seconds,
                    "phase": done.phase,
                    "report": done.report.model_dump(mode="json"),
                },
            )

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        """The cycle started under `key`: None if never received, running until its end, then its report."""
        self._maybe_fail()
        with self._server(server) as (session, _spec, _state, now):
            return _report(session.op(_PACKAGE, key), key, now)

    def run_command(self, server: str, key: str, command: str, timeout: float) -> CommandResult:
        """Run a hook's command (the language of simulation/commands.py) on an up server, once per key: a repeat
        answers the first run's result."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            done = session.op(EffectKind.COMMAND, key)
            if done is not None:
                return CommandResult.model_validate(done["result"])
            if not state.up:
                raise FleetError(f"server {spec.name} is not reachable")
            service = health.service_of_command(command)  # a health check's service command: from the state
            result = _service_state(state, service) if service is not None else commands.run(command, timeout)[0]
            session.put_op(EffectKind.COMMAND, key, {"at": now, "result": result.model_dump(mode="json")})
            session.record(Effect(spec.name, EffectKind.COMMAND, key, None, now))
            return result

    def command_result(self, server: str, key: str) -> CommandResult | None:
        """The result of the hook command run under `key` (None: never received); nothing runs."""
        with self._server(server) as (session, _spec, _state, _now):
            done = session.op(EffectKind.COMMAND, key)
            return None if done is None else CommandResult.model_validate(done["result"])

    # --- inspection (tests, demo) ------------------------------------------------------------

    def effects(self, server: str | None = None, kind: str | None = None) -> list[Effect]:
        """Every side effect received, oldest first, optionally of one server and/or one kind."""
        return self.store.effects(server, kind)

    def specs(self) -> list[SimServerSpec]:
        """The servers of the fleet, in the order they were created."""
        return [SimServerSpec.from_doc(doc) for doc in self.store.specs()]

    def installed_kbs(self, server: str) -> set[str]:
        """The KBs installed on `server` for good (installed and, if they needed one, rebooted since)."""
        with self._server(server) as (_, _spec, state, _now):
            return set(state.committed)

    def offered_kbs(self, server: str) -> list[str]:
        """What a search on `server` would offer now (before exclusions)."""
        with self._server(server) as (_, spec, state, _now):
            return [update.kb for update in search(spec, state)]

    # --- internals ---------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self.transient_error_rate <= 0.0:
            return
        with self._rng_lock:
            roll = self._rng.random()
        if roll < self.transient_error_rate:
            raise FleetError("simulated control-plane error")

    @contextmanager
    def _server(self, server: str) -> Iterator[tuple[StoreSession, SimServerSpec, ServerState, float]]:
        """One locked transaction on `server`, its state brought up to the clock first."""
        with self.store.session(server) as session:
            now = self.clock()
            spec = SimServerSpec.from_doc(session.spec)
            state = ServerState.from_doc(session.state)
            advance(spec, state, now)
            yield session, spec, state, now
            session.state = state.to_doc()


def _report(job: Document | None, key: str, now: float) -> CycleReport | None:
    """What `cycle_result` answers for the package job stored under `key` (None: never received)."""
    if job is None:
        return None
    if now < job["finish_at"]:
        running = dict(key=key, state=CycleState.RUNNING, started_at=_datetime(job["started_at"]),
                       result_code=ResultCode.IN_PROGRESS)
        every = job.get("heartbeat_seconds") or 0
        beats = int((now - job["started_at"]) // every) if every > 0 else 0
        if beats < 1:
            return CycleReport(**running)
        # the package posts a heartbeat every `every` seconds: the last one was heard then
        return HeartbeatReport(**running, phase=job.get("phase"), beats=beats,
                               heard_at=_datetime(job["started_at"] + beats * every))
    return CycleReport.model_validate(job["report"])


def _service_state(state: ServerState, service: str | None) -> CommandResult:
    """A service on a simulated server: running, unless it is SERVICE_DOWN after the reboot that followed an install."""
    if state.services_down:
        return CommandResult(exit_code=1, output=f"service {service} is Stopped (it did not start after the reboot)")
    return CommandResult(exit_code=0, output=f"service {service} is Running")


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)
