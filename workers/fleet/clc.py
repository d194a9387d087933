"""The `clc` fleet driver: the `Fleet` protocol over HTTP, against CLC API v2 (or `patchaas simulator`).

Retry policy (one HTTP request = one logical call, made of attempts):
- 5xx answers, connection errors, dropped connections and timeouts are retried with exponential backoff
  plus jitter (tenacity), at most `max_attempts` times and no longer than `retry_deadline` seconds;
  when they run out the call raises `FleetError` (transient: the engine retries the step later).
- 429 (throttled) is retried after the answer's `Retry-After` (seconds or an HTTP-date; a 503 with one is
  waited for the same way), within the same attempts and deadline; when they run out, `FleetError`.
- The other 4xx answers are never retried: 401 triggers one re-login and one replay of the request (a token
  can expire early); 404 and the other 4xx raise `FleetRefused` (permanent); 408 raises `FleetError`.
- Every attempt first waits its turn in the client-side adaptive limiter (throttle.AdaptiveLimiter), shared
  by every thread of the process that talks to the same base URL and user: it starts at `rate_start`
  requests a second, grows to at most `rate_per_second`, and slows down on 429s (AIMD), so that requests
  are not sent only to be refused.

Completion: operations the orchestrator treats as done when the call returns (set maintenance, power
off) are followed by polling their queue status until it succeeds (bounded by `operation_timeout`);
operations the orchestrator waits for itself (reboot, power on, execute package — it has deadlines and
checks boot ids and cycle reports) return as soon as CLC has queued them.

Our extensions of CLC API v2 are named in this module so that the simulator and this driver share them:
the `patchaas` object of a server (boot id, pending reboot, up), the `patchaas.*` package parameters,
the `Idempotency-Key` header, and the package-run report under `/v2/patchaas/...`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import tenacity

from orchestrator.ports import FleetError, FleetRefused
from orchestrator.settings import Settings
from schemas.fleet import CycleReport, PackageRun, ServerStatus, SettleStatus
from workers.fleet import clc_hooks, clc_wire, throttle
from workers.fleet.clc_wire import (
    EXTENSION,
    IDEMPOTENCY_HEADER,
    PACKAGE_RUN_NOT_FOUND,
    PENDING_STATUSES,
    package_parameters,
    package_run_path,
)
from workers.fleet.throttle import AdaptiveLimiter, backoff_seconds

log = logging.getLogger(__name__)
_JITTER = random.Random()

# --- errors ------------------------------------------------------------------------------------


class ClcAuthError(FleetError):
    """Login refused or a fresh token rejected: a deployment problem (credentials), not one server's.
    Transient for the orchestrator (an operator can fix the settings), never retried inside the driver."""


class _Transient(Exception):
    """An attempt that may succeed if repeated (5xx, 429, connection error, timeout); `retry_after`: the
    wait the answer asked for (Retry-After), else None (exponential backoff)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClcConfig:
    """How to reach the control plane and how hard to try. Worst case for one Fleet call is about
    `operation_timeout + retry_deadline + read_timeout` seconds: keep it well below the engine's lease."""

    base_url: str
    username: str
    password: str
    account_alias: str | None = None  # None: the alias the login answers
    rate_per_second: float = 10.0  # the most this process sends to the account (the adaptive limiter's ceiling)
    burst: int = 10
    rate_start: float | None = None  # where the adaptive limiter starts (None: at the ceiling); doubles each second
    concurrency: int = 128  # fleet calls in flight per process: a batch round's pool width, the HTTP pool
    rate_wait_max: float = 30.0
    max_attempts: int = 6
    backoff_initial: float = 0.25
    backoff_max: float = 4.0
    retry_deadline: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    poll_interval: float = 2.0
    operation_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("the rate limit needs rate_per_second > 0 and burst >= 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if (self.rate_start is not None and self.rate_start <= 0) or self.concurrency < 1:
            raise ValueError("rate_start must be > 0 and concurrency >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> ClcConfig:
        """The driver's configuration from PATCHAAS_CLC_* settings."""
        if not settings.clc_base_url or not settings.clc_username or settings.clc_password is None:
            raise ValueError(
                "the clc fleet driver needs PATCHAAS_CLC_BASE_URL, PATCHAAS_CLC_USERNAME and PATCHAAS_CLC_PASSWORD"
            )
        return cls(
            base_url=settings.clc_base_url,
            username=settings.clc_username,
            password=settings.clc_password.get_secret_value(),
            account_alias=settings.clc_account_alias,
            rate_per_second=settings.clc_rate_per_second,
            burst=settings.clc_rate_burst,
            rate_start=settings.clc_rate_start_per_second,
            concurrency=settings.clc_concurrency,
            max_attempts=settings.clc_retry_attempts,
            backoff_initial=settings.clc_retry_initial_seconds,
            backoff_max=settings.clc_retry_max_backoff_seconds,
            retry_deadline=settings.clc_retry_deadline_seconds,
            connect_timeout=settings.clc_connect_timeout_seconds,
            read_timeout=settings.clc_read_timeout_seconds,
            poll_interval=settings.clc_poll_interval_seconds,
            operation_timeout=settings.clc_operation_timeout_seconds,
        )


# --- the driver --------------------------------------------------------------------------------


class ClcFleet(clc_hooks.ClcCommands):
    """The `Fleet` protocol over CLC API v2: one httpx client, one bearer token, one rate limit.

    Thread-safe: the token and the limiter are guarded; httpx's client is safe to share (its pool holds
    `concurrency` connections: the batch round keeps that many calls in flight, see `concurrency`).
    `transport`, `sleep` and `clock` are for tests (httpx.MockTransport, recorded waits, a fake clock); with
    the real clock and sleep the limiter is the process's shared one for this base URL and user.
    """

    def __init__(
        self,
        config: ClcConfig,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._clock = clock
        self._client = httpx.Client(
            base_url=config.base_url,
            transport=transport,
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            headers={"Accept": "application/json"},
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self.concurrency = config.concurrency  # read by the batch round (orchestrator/engine/rounds.py)

        def make() -> AdaptiveLimiter:
            return AdaptiveLimiter(config.rate_per_second, config.burst, config.rate_start, clock, sleep,
                                   config.rate_wait_max)

        real = clock is time.monotonic and sleep is time.sleep
        self.limiter = throttle.shared(f"{config.base_url}|{config.username}", make) if real else make()
        self._auth_lock = threading.Lock()
        self._token: str | None = None
        self._alias: str | None = config.account_alias
        self.logins = 0  # how many times this driver logged in (tests and metrics)
        self.throttled = 0  # how many answers were 429 (tests and metrics)

    @classmethod
    def from_settings(cls, settings: Settings) -> ClcFleet:
        """A driver configured by PATCHAAS_CLC_* settings."""
        return cls(ClcConfig.from_settings(settings))

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    # --- the Fleet protocol ----------------------------------------------------------------------

    def status(self, server: str) -> ServerStatus:
        """GET the server; power state and maintenance from `details`, boot id etc. from our extension."""
        response = self._call("GET", f"/v2/servers/{self._alias_part()}/{quote(server, safe='')}")
        self._check(response, f"get server {server}")
        return clc_wire.server_status(server, clc_wire.json_answer(response))

    def settled(self, server: str) -> SettleStatus:
        """GET the server; the servicing stack's state from our extension (`patchaas.servicing`)."""
        response = self._call("GET", f"/v2/servers/{self._alias_part()}/{quote(server, safe='')}")
        self._check(response, f"get server {server}")
        return clc_wire.settle_status(server, clc_wire.json_answer(response))

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        """Set Maintenance, then wait until CLC says it is done (the orchestrator moves on at once)."""
        body = {"servers": [{"id": server, "inMaintenanceMode": on}]}
        status_id = self._queue("setMaintenance", body, server, key)
        self._await(status_id, f"maintenance {'on' if on else 'off'} for {server}")

    def power_on(self, server: str, key: str) -> None:
        """Queue Power On; the orchestrator waits for the server to be up."""
        self._queue("powerOn", [server], server, key)

    def power_off(self, server: str, key: str) -> None:
        """Power Off, then wait until CLC says it is done (the run ends right after)."""
        status_id = self._queue("powerOff", [server], server, key)
        self._await(status_id, f"power off {server}")

    def reboot(self, server: str, key: str) -> None:
        """Queue Reboot; the orchestrator waits for a new boot id."""
        self._queue("reboot", [server], server, key)

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        """Queue Execute Package with our parameters (execution, cycle, exclusions, idempotency key)."""
        body = {
            "servers": [server],
            "package": {"packageId": run.package_id, "parameters": package_parameters(run, key)},
        }
        self._queue("executePackage", body, server, key)

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        """The package run's report; None when the control plane never received that run."""
        response = self._call("GET", package_run_path(self._ensure_alias(), server, key))
        if response.status_code == 404 and clc_wire.body_of(response).get("code") == PACKAGE_RUN_NOT_FOUND:
            return None
        self._check(response, f"package run {key} on {server}")
        try:
            return CycleReport.model_validate(clc_wire.json_answer(response))
        except ValueError as exc:
            raise FleetError(f"malformed package run report for {key} on {server}: {exc}") from None

    # --- queued operations -----------------------------------------------------------------------

    def _queue(self, operation: str, body: object, server: str, key: str) -> str:
        """POST a server operation; the status id of `server`'s entry, or why it was not queued."""
        response = self._call("POST", f"/v2/operations/{self._alias_part()}/servers/{operation}", json=body, key=key)
        self._check(response, f"{operation} {server}")
        answer = clc_wire.json_answer(response)
        entries = answer if isinstance(answer, list) else []
        entry = next((e for e in entries if str(e.get("server", "")).upper() == server.upper()), None)
        if entry is None:
            raise FleetError(f"CLC {operation}: the answer has no entry for {server}")
        if not entry.get("isQueued"):
            extension = entry.get(EXTENSION) or {}
            message = entry.get("errorMessage") or "not queued"
            if extension.get("reason"):
                message = f"{message} ({extension['reason']})"
            if extension.get("retryable") is False:
                raise FleetRefused(f"CLC {operation} {server}: {message}")
            raise FleetError(f"CLC {operation} {server}: {message}")
        for link in entry.get("links") or []:
            if link.get("rel") == "status" and link.get("id"):
                return str(link["id"])
        raise FleetError(f"CLC {operation} {server}: queued without a status link")

    def _await(self, status_id: str, what: str) -> None:
        """Poll a queued operation's status until it is no longer pending (bounded)."""
        polls = max(1, math.ceil(self.config.operation_timeout / max(self.config.poll_interval, 1e-3))) + 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(polls) | tenacity.stop_after_delay(self.config.operation_timeout),
            wait=tenacity.wait_fixed(self.config.poll_interval),
            retry=tenacity.retry_if_result(lambda status: status in PENDING_STATUSES),
            sleep=self._sleep,
        )
        try:
            status = retrying(self._queue_status, status_id)
        except tenacity.RetryError:
            raise FleetError(f"{what}: still pending after {self.config.operation_timeout:g}s") from None
        if status != "succeeded":
            raise FleetError(f"{what}: the control plane says {status!r}")

    def _queue_status(self, status_id: str) -> str:
        response = self._call("GET", f"/v2/operations/{self._alias_part()}/status/{quote(status_id, safe='')}")
        if response.status_code == 404:
            # the control plane forgot the operation (restarted?): the engine checks the server and retries
            raise FleetError(f"CLC status {status_id}: unknown to the control plane")
        self._check(response, f"status {status_id}")
        return str(clc_wire.body_of(response).get("status", "unknown"))

    # --- requests --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, json: object = None, key: str | None = None) -> httpx.Response:
        """An authenticated request; on 401 log in again once and replay it."""
        headers = {IDEMPOTENCY_HEADER: key} if key else {}
        token = self._bearer()
        response = self._send(method, path, json, {**headers, "Authorization": f"Bearer {token}"})
        if response.status_code != 401:
            return response
        log.info("CLC answered 401 to %s %s: logging in again", method, path)
        self._forget(token)
        token = self._bearer()
        response = self._send(method, path, json, {**headers, "Authorization": f"Bearer {token}"})
        if response.status_code == 401:
            raise ClcAuthError(f"CLC rejected a fresh token for {method} {path}: {clc_wire.message_of(response)}")
        return response

    def _send(self, method: str, path: str, json: object, headers: Mapping[str, str]) -> httpx.Response:
        """One request: rate-limited attempts, retried with backoff and jitter on 5xx and transport errors."""
        config = self.config

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = getattr(error, "retry_after", None)
            if asked is not None:  # what the control plane asked for, plus a little jitter (many were refused)
                return float(asked) + _JITTER.uniform(0.0, 0.1 * max(asked, 0.1))
            return backoff_seconds(state.attempt_number, config.backoff_initial, config.backoff_max)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(config.max_attempts) | tenacity.stop_after_delay(config.retry_deadline),
            wait=wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=lambda state: log.info(
                "CLC %s %s: %s; retrying (attempt %d)",
                method,
                path,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
            ),
        )
        try:
            return retrying(self._attempt, method, path, json, headers)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            raise FleetError(
                f"CLC {method} {path}: no good answer after {exc.last_attempt.attempt_number} attempts ({last})"
            ) from None

    def _attempt(self, method: str, path: str, json: object, headers: Mapping[str, str]) -> httpx.Response:
        sent_at = self.limiter.acquire()
        try:
            response = self._client.request(method, path, json=json, headers=dict(headers))
        except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
            raise _Transient(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
        code = response.status_code
        if code in (429, 503):
            asked = throttle.retry_after_seconds(response.headers.get("Retry-After"), cap=self.config.retry_deadline)
            if code == 429:
                self.limiter.throttled_for(sent_at, asked)
                self.throttled += 1
                raise _Transient(f"HTTP 429: {clc_wire.message_of(response)}", 1.0 if asked is None else asked)
            if asked is not None:
                raise _Transient(f"HTTP 503: {clc_wire.message_of(response)}", asked)
        self.limiter.succeeded(sent_at)
        if code >= 500:
            raise _Transient(f"HTTP {code}: {clc_wire.message_of(response)}")
        return response

    def _check(self, response: httpx.Response, what: str) -> None:
        """Map a non-2xx answer (5xx never gets here) to the orchestrator's errors."""
        code = response.status_code
        if code < 400:
            return
        message = f"CLC {what}: HTTP {code}: {clc_wire.message_of(response)}"
        if code in (408, 429):  # a 429 gets here when its retries ran out
            raise FleetError(message)
        raise FleetRefused(message)

    # --- authentication --------------------------------------------------------------------------

    def _bearer(self) -> str:
        with self._auth_lock:
            if self._token is None:
                self._login()
            assert self._token is not None
            return self._token

    def _forget(self, token: str) -> None:
        with self._auth_lock:
            if self._token == token:
                self._token = None

    def _login(self) -> None:
        body = {"username": self.config.username, "password": self.config.password}
        response = self._send("POST", "/v2/authentication/login", body, {})
        if response.status_code != 200:
            raise ClcAuthError(f"CLC login as {self.config.username} refused: {clc_wire.message_of(response)}")
        answer = clc_wire.body_of(response)
        token = answer.get("bearerToken")
        if not token:
            raise ClcAuthError("CLC login answered without a bearer token")
        self._token = str(token)
        self._alias = self._alias or str(answer.get("accountAlias") or "") or None
        self.logins += 1

    def _ensure_alias(self) -> str:
        if self._alias is None:
            self._bearer()
        if not self._alias:
            raise ClcAuthError("no account alias: set PATCHAAS_CLC_ACCOUNT_ALIAS")
        return self._alias

    def _alias_part(self) -> str:
        return quote(self._ensure_alias(), safe="")
