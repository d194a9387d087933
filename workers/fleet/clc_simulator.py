"""`patchaas simulator`: a subset of CLC API v2 served over a `SimulatedFleet`, with fault injection.

The HTTP side of the simulated fleet, so that the `clc` driver, the demo and the end-to-end suite run the
production code path over real HTTP. What it serves (see docs/CLC_SIMULATOR.md for every shape):

- POST /v2/authentication/login, GET /v2/servers/{alias}/{serverId}
- POST /v2/operations/{alias}/servers/{setMaintenance|startMaintenance|stopMaintenance|executePackage|
  reboot|powerOn|powerOff}, GET /v2/operations/{alias}/status/{statusId}
- our own: GET /v2/patchaas/{alias}/servers/{server}/packageRuns/{key} (the report of one package run),
  GET /simulator/health and GET /simulator/faults (never faulted, no token)
- the package's report channel, client side: a package run given `patchaas.reportUrl` and
  `patchaas.reportToken` POSTs its cycle report there when the cycle ends (`Reporter`), as the PowerShell
  package does: with the bearer token and `Idempotency-Key`, 5xx and network errors retried, 4xx final.
- no GET /v2/groups: the simulated fleet knows no groups (the orchestrator's inventory does).

Control-plane bookkeeping (tokens, queued operations, idempotency keys) lives in this process; the fleet's
state (servers, effects, package runs) lives in the fleet's store, shared with other processes when it is
a SqlStore. A request carrying an `Idempotency-Key` (or, for Execute Package, the `patchaas.idempotencyKey`
parameter) performs its effect once per (operation, server, key) and answers the same status id again.

Faults (`Faults`): added latency on every CLC request; a share of requests answered 500/502/503; a share of
connections closed without an answer; tokens that expire after `token_ttl_seconds`. Half of the injected
5xx and drops (by default) strike after the request's effect was done: the answer is lost, not the work.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import queue
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import tenacity
import uvicorn
from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestrator.fleet import FleetError, FleetRefused
from schemas.fleet import CycleReport, CycleState, PackageRun, ResultCode
from workers.fleet import clc, simulated

CLC_BAD_CREDENTIALS = "We didn't recognize the username or password you entered. Please try again."
CLC_NOT_QUEUED = "The operation cannot be queued because the server cannot be found or it is not in a valid state."
UNAUTHORIZED = "Authorization has been denied for this request."  # ASP.NET Web API's default (unconfirmed)
SERVER_ERROR = "An error has occurred."  # ASP.NET Web API's default 500 body
TRANSPORT_STATE_KEY = "patchaas.transport"  # where DroppableH11Protocol puts the connection's transport
DEFAULT_TOKEN_TTL = 14 * 24 * 3600.0  # CLC: a token lives up to 2 weeks
_DATACENTER = re.compile(r"^([A-Za-z]{2}\d)")
log = logging.getLogger(__name__)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimUser:
    """A control-plane user: the login answers its account and location aliases."""

    username: str
    password: str
    account_alias: str = "OSD"
    location_alias: str = "VA1"
    roles: tuple[str, ...] = ("ServerAdmin", "AccountAdmin")


@dataclass(frozen=True)
class Faults:
    """What goes wrong on purpose. Rates are per request; `after_effect_share` of the injected 5xx and
    drops happen after the request's effect was done (the work is done, only the answer is lost)."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    token_ttl_seconds: float = DEFAULT_TOKEN_TTL
    after_effect_share: float = 0.5
    seed: int = 0
    report_drop_rate: float = 0.0  # share of cycle reports a simulated server never posts (polling must cover)
    report_duplicate_rate: float = 0.0  # share of cycle reports posted twice (the API must record them once)
    hide_package_results: bool = False  # packageRuns never tells a run finished: results only by report channel

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "after_effect_share", "report_drop_rate", "report_duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} is not within [0, 1]")
        if self.error_rate + self.drop_rate > 1.0:
            raise ValueError("error_rate + drop_rate must not exceed 1")
        if self.latency_ms < 0 or self.token_ttl_seconds <= 0:
            raise ValueError("latency_ms must be >= 0 and token_ttl_seconds > 0")


@dataclass
class FaultLog:
    """How many faults were injected (GET /simulator/faults): tests prove the run went through them."""

    requests: int = 0
    errors_before: int = 0
    errors_after: int = 0
    drops_before: int = 0
    drops_after: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        """Add one to the counter `name` (requests, errors_before, drops_after, ...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict[str, Any]:
        """The counters as the faults endpoint answers them."""
        with self._lock:
            return {
                "requests": self.requests,
                "errors": {"beforeEffect": self.errors_before, "afterEffect": self.errors_after},
                "drops": {"beforeEffect": self.drops_before, "afterEffect": self.drops_after},
            }


# --- the report channel, as the update package on each server uses it ---------------------------


@dataclass
class ReportLog:
    """What the simulated servers did with their cycle reports (GET /simulator/faults, `reports`)."""

    posted: int = 0  # answered 201: recorded
    replayed: int = 0  # answered 200: the same report was recorded before
    refused: int = 0  # answered 4xx: final, logged with the API's message
    failed: int = 0  # retries ran out (5xx, network): the orchestrator polls the result instead
    dropped: int = 0  # never posted on purpose (Faults.report_drop_rate)
    duplicated: int = 0  # posted a second time on purpose (Faults.report_duplicate_rate)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in
                    ("posted", "replayed", "refused", "failed", "dropped", "duplicated")}


@dataclass(frozen=True)
class ReportJob:
    """One package run whose report goes to the channel when its cycle has finished."""

    server: str
    key: str
    url: str
    token: str


class _RetryPost(Exception):
    """A report POST that may succeed if repeated (5xx, connection error, timeout)."""


class Reporter:
    """The end of the update package's cycle on a simulated server: wait until the cycle has finished, then
    POST `CycleReport` JSON (the body `windows-update.ps1` builds) to the report URL with
    `Authorization: Bearer <token>` and `Idempotency-Key: <key>`. 5xx answers and network errors are retried
    with backoff and jitter (tenacity) for up to `post_attempts` attempts / `post_deadline` seconds; a 4xx is
    final and logged with the API's message. A report that is never delivered loses nothing: the orchestrator
    falls back to polling the package run. Daemon worker threads, started on the first job."""

    def __init__(
        self,
        fleet: simulated.SimulatedFleet,
        faults: Faults,
        threads: int = 8,
        client: httpx.Client | None = None,
        post_attempts: int = 6,
        post_deadline: float = 30.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 3.0,
        cycle_wait: float = 3600.0,
    ) -> None:
        self.fleet = fleet
        self.faults = faults
        self.log = ReportLog()
        self.post_attempts = post_attempts
        self.post_deadline = post_deadline
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.cycle_wait = cycle_wait
        self._client = client or httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        self._jobs: queue.Queue[ReportJob | None] = queue.Queue()
        self._stop = threading.Event()
        self._size = threads
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._rng = random.Random(faults.seed + 1)
        self._rng_lock = threading.Lock()

    def submit(self, server: str, key: str, url: str, token: str) -> None:
        """Post the report of package run `key` on `server` once its cycle has finished."""
        self._ensure_started()
        self._jobs.put(ReportJob(server, key, url, token))

    def pending(self) -> int:
        """Jobs waiting for a worker thread (tests)."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Stop: waits and retries end at once, queued jobs are not posted (polling covers them)."""
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._client.close()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._threads or self._stop.is_set():
                return
            for n in range(self._size):
                thread = threading.Thread(target=self._work, name=f"sim-reporter-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._deliver(job)
            except Exception:  # a reporter thread must survive anything one report does
                self.log.count("failed")
                log.exception("report of %s on %s: not delivered", job.key, job.server)

    def _roll(self) -> float:
        with self._rng_lock:
            return self._rng.random()

    def _deliver(self, job: ReportJob) -> None:
        report = self._finished(job)
        if report is None:
            self.log.count("failed")
            return
        if self._roll() < self.faults.report_drop_rate:
            self.log.count("dropped")
            return
        copies = 2 if self._roll() < self.faults.report_duplicate_rate else 1
        body = report.model_dump(mode="json")
        for copy in range(copies):
            if copy:
                self.log.count("duplicated")
            self._post(job, body)

    def _finished(self, job: ReportJob) -> CycleReport | None:
        """The cycle's final report, waiting (tenacity, bounded) while the simulated cycle still runs."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.cycle_wait) | tenacity.stop_any(lambda _s: self._stop.is_set()),
            wait=self._until_finished,
            retry=tenacity.retry_if_exception_type(FleetError)
            | tenacity.retry_if_result(lambda r: r is not None and r.state is CycleState.RUNNING),
            sleep=self._stop.wait,
        )
        try:
            report = retrying(self.fleet.cycle_result, job.server, job.key)
        except (tenacity.RetryError, FleetError) as exc:
            log.warning("report of %s on %s: the cycle did not finish (%s)", job.key, job.server, exc)
            return None
        return report if report is not None and report.state is CycleState.FINISHED else None

    def _until_finished(self, state: tenacity.RetryCallState) -> float:
        """How long a running cycle has left (the simulated package run takes `package_seconds`), at most
        a second; a short backoff after a transient error of the fleet."""
        outcome = state.outcome
        report = outcome.result() if outcome is not None and not outcome.failed else None
        if isinstance(report, CycleReport):
            left = report.started_at.timestamp() + self.fleet.timings.package_seconds - self.fleet.clock()
            return min(1.0, max(0.01, left))
        return min(1.0, 0.05 * 2 ** (state.attempt_number - 1))

    def _post(self, job: ReportJob, body: dict[str, Any]) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.post_attempts)
            | tenacity.stop_after_delay(self.post_deadline)
            | tenacity.stop_any(lambda _s: self._stop.is_set()),
            wait=lambda state: clc.backoff_seconds(state.attempt_number, self.backoff_initial, self.backoff_max),
            retry=tenacity.retry_if_exception_type(_RetryPost),
            sleep=self._stop.wait,
        )
        try:
            response = retrying(self._attempt, job, body)
        except tenacity.RetryError as exc:
            self.log.count("failed")
            log.warning("report of %s on %s: not delivered (%s)", job.key, job.server, exc.last_attempt.exception())
            return
        if response.status_code == 201:
            self.log.count("posted")
        elif response.status_code < 300:
            self.log.count("replayed")
        else:
            self.log.count("refused")
            log.warning("report of %s on %s refused: HTTP %d %s", job.key, job.server, response.status_code,
                        _answer_message(response))

    def _attempt(self, job: ReportJob, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {job.token}", clc.IDEMPOTENCY_HEADER: job.key}
        try:
            response = self._client.post(job.url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise _RetryPost(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
        if response.status_code >= 500:
            raise _RetryPost(f"HTTP {response.status_code}: {_answer_message(response)}")
        return response


def _answer_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)[:200]


def hidden(report: CycleReport) -> CycleReport:
    """A finished report as a control plane that cannot see the outcome answers it: still running."""
    return CycleReport(key=report.key, state=CycleState.RUNNING, started_at=report.started_at,
                       result_code=ResultCode.IN_PROGRESS)


# --- the control plane -------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedOperation:
    """One queued server operation, kept so its status can be answered (and its key recognised)."""

    status_id: str
    operation: str
    server: str
    key: str
    boot_id_before: str | None = None
    report_to: tuple[str, str] | None = None  # (report URL, token) given to the package: part 3 posts there


@dataclass(frozen=True)
class QueueEntry:
    """One server's entry in a queued operation's answer."""

    server: str
    operation: QueuedOperation | None = None
    reason: str | None = None
    retryable: bool = True

    def as_json(self, alias: str) -> dict[str, Any]:
        """CLC's shape: a status link when queued, an errorMessage (and our reason) when not."""
        if self.operation is not None:
            href = f"/v2/operations/{alias.lower()}/status/{self.operation.status_id}"
            return {
                "server": self.server,
                "isQueued": True,
                "links": [{"rel": "status", "href": href, "id": self.operation.status_id}],
            }
        return {
            "server": self.server,
            "isQueued": False,
            "errorMessage": CLC_NOT_QUEUED,
            clc.EXTENSION: {"retryable": self.retryable, "reason": self.reason},
        }


class ControlPlane:
    """Tokens, queued operations and idempotency over a simulated fleet; thread-safe.

    Calls for one server are serialized by a per-server lock, so "was this key seen? if not, act and
    remember it" is atomic within this process (the only process serving the fleet over HTTP).
    """

    def __init__(
        self,
        fleet: simulated.SimulatedFleet,
        users: Iterable[SimUser],
        token_ttl_seconds: float = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.users = {user.username.lower(): user for user in users}
        self.token_ttl = token_ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[SimUser, float]] = {}
        self._operations: dict[str, QueuedOperation] = {}
        self._by_key: dict[tuple[str, str, str], str] = {}
        self._server_locks: dict[str, threading.Lock] = {}
        self._numbers = itertools.count(10_001)
        self.expired_tokens = 0  # tokens refused because their TTL ran out (GET /simulator/faults)

    # --- authentication ------------------------------------------------------------------------

    def login(self, username: str, password: str) -> tuple[SimUser, str] | None:
        """A new bearer token for good credentials; None otherwise."""
        user = self.users.get(username.lower())
        if user is None or not secrets.compare_digest(user.password, password):
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, self.clock() + self.token_ttl)
        return user, token

    def authenticate(self, token: str) -> SimUser | None:
        """The user of a live token; an expired token is forgotten."""
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            user, expires_at = found
            if self.clock() >= expires_at:
                del self._tokens[token]
                self.expired_tokens += 1
                return None
            return user

    # --- queued operations ---------------------------------------------------------------------

    def queue(
        self,
        operation: str,
        server: str,
        key: str | None,
        act: Callable[[str], QueuedOperation | None] | None = None,
    ) -> QueueEntry:
        """Do `operation` on `server` once per key: `act(key)` performs the effect (the default acts by
        operation name) and may return the record to keep; refusals become unqueued entries."""
        name = server.upper()
        key = key or f"sim-{uuid.uuid4().hex}"
        with self._locked(name):
            with self._lock:
                known = self._by_key.get((operation, name, key))
                if known is not None:
                    return QueueEntry(name, self._operations[known])
            try:
                record = (act or self._default_act(operation, name))(key)
            except FleetRefused as refused:
                return QueueEntry(name, reason=str(refused), retryable=False)
            except FleetError as error:
                return QueueEntry(name, reason=str(error), retryable=True)
            status_id = f"{_datacenter(name).lower()}-{next(self._numbers)}"
            done = QueuedOperation(
                status_id=status_id,
                operation=operation,
                server=name,
                key=key,
                boot_id_before=record.boot_id_before if record else None,
                report_to=record.report_to if record else None,
            )
            with self._lock:
                self._operations[status_id] = done
                self._by_key[(operation, name, key)] = status_id
            return QueueEntry(name, done)

    def status(self, status_id: str) -> str | None:
        """CLC's queue status of an operation: succeeded once its effect is complete; None if unknown."""
        with self._lock:
            done = self._operations.get(status_id)
        if done is None:
            return None
        fleet = self.fleet
        try:
            match done.operation:
                case "powerOn":
                    return "succeeded" if fleet.status(done.server).up else "executing"
                case "reboot":
                    now = fleet.status(done.server)
                    back = now.up and now.boot_id != done.boot_id_before
                    return "succeeded" if back else "executing"
                case "executePackage":
                    report = fleet.cycle_result(done.server, done.key)
                    if report is None:
                        return "failed"
                    return "succeeded" if report.state is CycleState.FINISHED else "executing"
                case _:
                    return "succeeded"  # maintenance and power off are done when queued
        except FleetError:
            return "unknown"

    def _default_act(self, operation: str, server: str) -> Callable[[str], QueuedOperation | None]:
        fleet = self.fleet

        def act(key: str) -> QueuedOperation | None:
            match operation:
                case "startMaintenance":
                    fleet.set_maintenance(server, True, key)
                case "stopMaintenance":
                    fleet.set_maintenance(server, False, key)
                case "powerOn":
                    fleet.power_on(server, key)
                case "powerOff":
                    fleet.power_off(server, key)
                case "reboot":
                    before = fleet.status(server).boot_id
                    fleet.reboot(server, key)
                    return QueuedOperation("", operation, server, key, boot_id_before=before)
                case _:
                    raise ValueError(f"no default action for {operation}")
            return None

        return act

    @contextmanager
    def _locked(self, server: str) -> Iterator[None]:
        with self._lock:
            lock = self._server_locks.setdefault(server, threading.Lock())
        with lock:
            yield


def _datacenter(server: str) -> str:
    match = _DATACENTER.match(server)
    return match.group(1).upper() if match else "VA1"


# --- request bodies ----------------------------------------------------------------------------


class LoginBody(BaseModel):
    """POST /v2/authentication/login."""

    username: str
    password: str


class MaintenanceEntry(BaseModel):
    """One server of Set Maintenance."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(min_length=1)
    in_maintenance_mode: bool = Field(alias="inMaintenanceMode")


class SetMaintenanceBody(BaseModel):
    """POST .../servers/setMaintenance."""

    servers: list[MaintenanceEntry]


class PackageBody(BaseModel):
    """The `package` of Execute Package."""

    model_config = ConfigDict(populate_by_name=True)

    package_id: str = Field(alias="packageId", min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ExecutePackageBody(BaseModel):
    """POST .../servers/executePackage."""

    servers: list[str]
    package: PackageBody


def package_invocation(package: PackageBody, header_key: str | None) -> tuple[PackageRun, str, tuple[str, str] | None]:
    """The run, its idempotency key and its report channel, from the package parameters (ours are
    `patchaas.*`; the rest are the execution's own and are passed through)."""
    params = dict(package.parameters)
    key = str(params.pop(clc.PARAM_IDEMPOTENCY_KEY, "") or header_key or f"sim-{uuid.uuid4().hex}")
    execution_id = str(params.pop(clc.PARAM_EXECUTION_ID, "") or key)
    exclude = str(params.pop(clc.PARAM_EXCLUDE_KBS, "") or "")
    report_url = params.pop(clc.PARAM_REPORT_URL, None)
    report_token = params.pop(clc.PARAM_REPORT_TOKEN, None)
    try:
        cycle = int(params.pop(clc.PARAM_CYCLE, 1) or 1)
        run = PackageRun(
            package_id=package.package_id,
            execution_id=execution_id,
            cycle=cycle,
            exclude_kbs=tuple(kb.strip().upper() for kb in exclude.split(",") if kb.strip()),
            parameters=params,
        )
    except (ValueError, ValidationError) as exc:
        raise HTTPException(400, f"The package parameters are invalid: {exc}") from None
    report_to = (str(report_url), str(report_token)) if report_url and report_token else None
    return run, key, report_to


# --- answers -----------------------------------------------------------------------------------


def server_json(alias: str, fleet: simulated.SimulatedFleet, server: str) -> dict[str, Any]:
    """GET /v2/servers/{alias}/{serverId} in CLC's shape, plus our `patchaas` extension."""
    status = fleet.status(server.upper())
    server_id = status.name.lower()
    digest = hashlib.sha256(status.name.encode()).digest()
    alias_lower = alias.lower()
    return {
        "id": server_id,
        "name": status.name,
        "description": "",
        "groupId": None,  # the simulated fleet knows no groups
        "isTemplate": False,
        "locationId": _datacenter(status.name),
        "osType": status.os_type,
        "status": "active",
        "details": {
            "ipAddresses": [{"internal": f"10.{digest[0]}.{digest[1]}.{digest[2] % 250 + 2}"}],
            "alertPolicies": [],
            "cpu": 2,
            "diskCount": 1,
            "hostName": server_id,
            "inMaintenanceMode": status.in_maintenance,
            "memoryMB": 4096,
            "powerState": status.power_state.value,
            "storageGB": 60,
            "disks": [],
            "partitions": [],
            "snapshots": [],
            "customFields": [],
        },
        "type": "standard",
        "storageType": "standard",
        "links": [
            {"rel": "self", "href": f"/v2/servers/{alias_lower}/{server_id}", "id": server_id, "verbs": ["GET"]},
            {"rel": "account", "href": f"/v2/accounts/{alias_lower}", "id": alias_lower},
        ],
        clc.EXTENSION: {"bootId": status.boot_id, "rebootPending": status.pending_reboot, "up": status.up},
    }


def _message(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, **extra}, status_code=status)


# --- the app -----------------------------------------------------------------------------------


def current_user(request: Request, alias: str, authorization: Annotated[str | None, Header()] = None) -> SimUser:
    """The caller of a CLC endpoint: a live bearer token of a user of account `alias` (401, 403)."""
    plane: ControlPlane = request.app.state.plane
    scheme, _, token = (authorization or "").partition(" ")
    user = plane.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(401, UNAUTHORIZED)
    if user.account_alias.upper() != alias.upper():
        raise HTTPException(403, f"The user {user.username} has no access to account {alias}.")
    return user


Caller = Annotated[SimUser, Depends(current_user)]
IdempotencyKey = Annotated[str | None, Header(alias=clc.IDEMPOTENCY_HEADER)]
ServerNames = Annotated[list[str], Body()]


def create_app(
    fleet: simulated.SimulatedFleet,
    users: Iterable[SimUser],
    faults: Faults | None = None,
    clock: Callable[[], float] = time.monotonic,
    reporter: Reporter | None = None,
) -> FastAPI:
    """The simulator's FastAPI app over `fleet`, for `users`, injecting `faults`.

    `app.state.plane` is the ControlPlane, `app.state.fault_log` the injected-fault counters,
    `app.state.reporter` what posts the servers' cycle reports (close it when done: `running()` does).
    """
    faults = faults or Faults()
    plane = ControlPlane(fleet, users, faults.token_ttl_seconds, clock)
    fault_log = FaultLog()
    reporter = reporter or Reporter(fleet, faults)
    app = FastAPI(
        title="patchaas CLC API v2 simulator", docs_url=None, redoc_url=None, openapi_url="/simulator/openapi.json"
    )
    app.state.plane = plane
    app.state.fault_log = fault_log
    app.state.reporter = reporter

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            return JSONResponse(exc.detail, status_code=exc.status_code)
        return _message(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        state: dict[str, list[str]] = {}
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            state.setdefault(where, []).append(str(error.get("msg", "invalid")))
        return _message(400, "The request is invalid.", modelState=state)

    def answer(alias: str, entries: Iterable[QueueEntry]) -> list[dict[str, Any]]:
        return [entry.as_json(alias) for entry in entries]

    @app.post("/v2/authentication/login")
    def login(body: LoginBody) -> Any:
        found = plane.login(body.username, body.password)
        if found is None:
            return _message(400, CLC_BAD_CREDENTIALS)
        user, token = found
        return {
            "userName": user.username,
            "accountAlias": user.account_alias,
            "locationAlias": user.location_alias,
            "roles": list(user.roles),
            "bearerToken": token,
        }

    @app.get("/v2/servers/{alias}/{server_id}")
    def get_server(alias: str, server_id: str, _user: Caller) -> Any:
        try:
            return server_json(alias, fleet, server_id)
        except FleetRefused:
            return _message(404, f"The server {server_id} was not found.", code="serverNotFound")
        except FleetError as error:
            return _message(500, f"{SERVER_ERROR} ({error})")

    @app.post("/v2/operations/{alias}/servers/setMaintenance")
    def set_maintenance(alias: str, body: SetMaintenanceBody, _user: Caller, key: IdempotencyKey = None) -> Any:
        def act_for(on: bool, server: str) -> Callable[[str], QueuedOperation | None]:
            def act(k: str) -> None:
                fleet.set_maintenance(server, on, k)

            return act

        return answer(
            alias,
            (
                plane.queue("setMaintenance", e.id, key, act_for(e.in_maintenance_mode, e.id.upper()))
                for e in body.servers
            ),
        )

    def bare(operation: str) -> Callable[..., Any]:
        def endpoint(alias: str, servers: ServerNames, _user: Caller, key: IdempotencyKey = None) -> Any:
            return answer(alias, (plane.queue(operation, server, key) for server in servers))

        endpoint.__name__ = operation
        return endpoint

    for operation in ("startMaintenance", "stopMaintenance", "reboot", "powerOn", "powerOff"):
        app.post(f"/v2/operations/{{alias}}/servers/{operation}", name=operation)(bare(operation))

    @app.post("/v2/operations/{alias}/servers/executePackage")
    def execute_package(alias: str, body: ExecutePackageBody, _user: Caller, key: IdempotencyKey = None) -> Any:
        run, run_key, report_to = package_invocation(body.package, key)

        def act_for(server: str) -> Callable[[str], QueuedOperation | None]:
            def act(k: str) -> QueuedOperation:
                fleet.invoke_package(server, k, run)
                if report_to is not None:  # the package posts its report when the cycle ends
                    reporter.submit(server, k, *report_to)
                return QueuedOperation("", "executePackage", server, k, report_to=report_to)

            return act

        return answer(alias, (plane.queue("executePackage", s, run_key, act_for(s.upper())) for s in body.servers))

    @app.get("/v2/operations/{alias}/status/{status_id}")
    def queue_status(alias: str, status_id: str, _user: Caller) -> Any:
        status = plane.status(status_id)
        if status is None:
            return _message(404, f"The status {status_id} was not found.")
        return {"status": status}

    @app.get("/v2/patchaas/{alias}/servers/{server}/packageRuns/{key}")
    def package_run(alias: str, server: str, key: str, _user: Caller) -> Any:
        try:
            report = fleet.cycle_result(server.upper(), key)
        except FleetRefused:
            return _message(404, f"The server {server} was not found.", code="serverNotFound")
        except FleetError as error:
            return _message(500, f"{SERVER_ERROR} ({error})")
        if report is None:
            return _message(404, f"No package run {key} on {server}.", code=clc.PACKAGE_RUN_NOT_FOUND)
        if faults.hide_package_results:
            report = hidden(report)
        return report.model_dump(mode="json")

    @app.get("/simulator/health")
    def health() -> Any:
        return {"status": "ok", "servers": len(fleet.specs())}

    @app.get("/simulator/faults")
    def fault_counts() -> Any:
        return {**fault_log.as_json(), "expiredTokens": plane.expired_tokens, "reports": reporter.log.as_json()}

    app.add_middleware(FaultInjector, faults=faults, log=fault_log)
    return app


# --- fault injection ---------------------------------------------------------------------------


class DroppedConnection(ConnectionError):
    """A drop was asked for but the server gives no access to the connection (not `serve()`)."""


async def _swallow(_message: Message) -> None:
    return None


class FaultInjector:
    """ASGI middleware: latency, 5xx answers and dropped connections on the CLC paths (`/v2/...`)."""

    def __init__(self, app: ASGIApp, faults: Faults, log: FaultLog) -> None:
        self.app = app
        self.faults = faults
        self.log = log
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        self.log.count("requests")
        if self.faults.latency_ms > 0:
            await asyncio.sleep(self.faults.latency_ms / 1000.0)
        fault, after, status = self._roll()
        if fault is None:
            await self.app(scope, receive, send)
            return
        if after:
            await self.app(scope, receive, _swallow)  # the effect happens; its answer is lost
        self.log.count(f"{fault}s_{'after' if after else 'before'}")
        if fault == "drop":
            await self._drop(scope, receive)
        else:
            await _message(status, SERVER_ERROR)(scope, receive, send)

    def _roll(self) -> tuple[str | None, bool, int]:
        with self._lock:
            roll = self._rng.random()
            after = self._rng.random() < self.faults.after_effect_share
            status = self._rng.choice((500, 502, 503))
        if roll < self.faults.error_rate:
            return "error", after, status
        if roll < self.faults.error_rate + self.faults.drop_rate:
            return "drop", after, status
        return None, False, 200

    async def _drop(self, scope: Scope, receive: Receive) -> None:
        """Close the connection without an answer, then wait for the server to notice."""
        transport = (scope.get("state") or {}).get(TRANSPORT_STATE_KEY)
        if transport is None:
            raise DroppedConnection("connection drop asked for outside `serve()`")
        transport.close()
        while (await receive())["type"] != "http.disconnect":
            pass


class DroppableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands each request its connection's transport (in `scope["state"]`),
    so the fault injector can close the socket without answering."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, TRANSPORT_STATE_KEY: transport}


# --- running it --------------------------------------------------------------------------------


def fleet_for(
    state_url: str | None,
    seed: int,
    servers: int | None,
    alias: str = "OSD",
    timings: simulated.SimTimings | None = None,
) -> simulated.SimulatedFleet:
    """The fleet to serve: attached to the shared store at `state_url` (a new one of `servers` servers
    replaces what it holds when `servers` is given), or in memory (`servers`, default 20)."""
    timings = timings or simulated.SimTimings.instant()
    store: simulated.FleetStore = simulated.SqlStore(state_url) if state_url else simulated.MemoryStore()
    if servers is None and state_url:
        return simulated.SimulatedFleet.load(store, timings, seed)
    specs = simulated.build_fleet_specs(seed, 20 if servers is None else servers, alias=alias)
    return simulated.SimulatedFleet.create(specs, store, timings, seed=seed, reset=True)


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


def users_from(pairs: Mapping[str, str], alias: str, location: str = "VA1") -> list[SimUser]:
    """Users of account `alias` from username -> password."""
    return [SimUser(name, password, alias.upper(), location.upper()) for name, password in pairs.items()]
