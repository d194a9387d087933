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

Faults (`Faults`): added latency on every CLC request; a rate limit per account (429 with `Retry-After`,
`clc_rate_limit`); a share of requests answered 500/502/503; a share of
connections closed without an answer; tokens that expire after `token_ttl_seconds`. Half of the injected
5xx and drops (by default) strike after the request's effect was done: the answer is lost, not the work.

The pieces: the app (this module), request bodies (`clc_bodies`), answers (`clc_answers`), the control plane
(`clc_control_plane`), fault injection (`clc_faults`), the report channel (`clc_reporter`) and running it
(`clc_server`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from orchestrator.ports import FleetError, FleetRefused
from schemas.fleet import CycleReport, HeartbeatReport
from simulation.clc_answers import CLC_BAD_CREDENTIALS, SERVER_ERROR, UNAUTHORIZED, hidden, json_message, server_json
from simulation.clc_bodies import (
    ExecutePackageBody,
    LoginBody,
    SetMaintenanceBody,
    hook_command,
    package_invocation,
)
from simulation.clc_control_plane import ControlPlane, QueuedOperation, QueueEntry, SimUser
from simulation.clc_faults import FaultInjector, FaultLog, Faults
from simulation.clc_reporter import Reporter
from simulation.fleet import SimulatedFleet
from workers.fleet import clc_wire


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
IdempotencyKey = Annotated[str | None, Header(alias=clc_wire.IDEMPOTENCY_HEADER)]
ORCHESTRATOR_ONLY = frozenset(HeartbeatReport.model_fields) - frozenset(CycleReport.model_fields)
ServerNames = Annotated[list[str], Body()]


def create_app(
    fleet: SimulatedFleet,
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
    fault_log = FaultLog(rate=faults.rate_limit or None)
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
        return json_message(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        state: dict[str, list[str]] = {}
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            state.setdefault(where, []).append(str(error.get("msg", "invalid")))
        return json_message(400, "The request is invalid.", modelState=state)

    def answer(alias: str, entries: Iterable[QueueEntry]) -> list[dict[str, Any]]:
        return [entry.as_json(alias) for entry in entries]

    @app.post("/v2/authentication/login")
    def login(body: LoginBody) -> Any:
        found = plane.login(body.username, body.password)
        if found is None:
            return json_message(400, CLC_BAD_CREDENTIALS)
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
            return json_message(404, f"The server {server_id} was not found.", code="serverNotFound")
        except FleetError as error:
            return json_message(500, f"{SERVER_ERROR} ({error})")

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
        if body.package.package_id == clc_wire.HOOK_PACKAGE_ID:  # a hook's command (docs/HOOKS.md)
            command, timeout, hook_key = hook_command(body.package, key)

            def run_for(server: str) -> Callable[[str], QueuedOperation | None]:
                def act(k: str) -> QueuedOperation:
                    fleet.run_command(server, k, command, timeout)
                    return QueuedOperation("", "executePackage", server, k)

                return act

            return answer(alias, (plane.queue("executePackage", s, hook_key, run_for(s.upper())) for s in body.servers))
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
            return json_message(404, f"The status {status_id} was not found.")
        return {"status": status}

    @app.get("/v2/patchaas/{alias}/servers/{server}/packageRuns/{key}")
    def package_run(alias: str, server: str, key: str, _user: Caller) -> Any:
        try:
            report = fleet.cycle_result(server.upper(), key)
        except FleetRefused:
            return json_message(404, f"The server {server} was not found.", code="serverNotFound")
        except FleetError as error:
            return json_message(500, f"{SERVER_ERROR} ({error})")
        if report is None:
            return json_message(404, f"No package run {key} on {server}.", code=clc_wire.PACKAGE_RUN_NOT_FOUND)
        if faults.hide_package_results:
            report = hidden(report)
        return report.model_dump(mode="json", exclude=ORCHESTRATOR_ONLY)  # a control plane hears no heartbeats

    @app.get("/v2/patchaas/{alias}/servers/{server}/commandRuns/{key}")
    def command_run(alias: str, server: str, key: str, _user: Caller) -> Any:
        try:
            result = fleet.command_result(server.upper(), key)
        except FleetRefused:
            return json_message(404, f"The server {server} was not found.", code="serverNotFound")
        if result is None:
            return json_message(404, f"No command run {key} on {server}.", code=clc_wire.COMMAND_RUN_NOT_FOUND)
        return {"state": "finished", "exitCode": result.exit_code, "output": result.output,
                "timedOut": result.timed_out}

    @app.get("/simulator/health")
    def health() -> Any:
        return {"status": "ok", "servers": len(fleet.specs())}

    @app.get("/simulator/faults")
    def fault_counts() -> Any:
        return {**fault_log.as_json(), "expiredTokens": plane.expired_tokens, "reports": reporter.log.as_json()}

    app.add_middleware(FaultInjector, faults=faults, log=fault_log)
    return app
