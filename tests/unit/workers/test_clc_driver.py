"""The clc driver's retry, re-login, rate-limit and error-mapping behaviour, against httpx.MockTransport
(a scripted CLC); waits are recorded, never slept."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from orchestrator.ports import FleetError, FleetRefused
from orchestrator.settings import Settings
from schemas.fleet import CycleState, PackageRun, PowerState
from workers.fleet import clc, clc_wire, throttle

SERVER = "VA1OSDPATCH01"
SERVER_PATH = f"/v2/servers/OSD/{SERVER}"


def server_body(boot: int = 1) -> dict[str, Any]:
    return {
        "id": SERVER.lower(),
        "name": SERVER,
        "osType": "Windows 2012R2 Datacenter 64-bit",
        "status": "active",
        "details": {"powerState": "started", "inMaintenanceMode": False},
        "patchaas": {"bootId": f"{SERVER}-boot-{boot}", "rebootPending": False, "up": True},
    }


def queued(status_id: str = "va1-1") -> list[dict[str, Any]]:
    return [
        {
            "server": SERVER,
            "isQueued": True,
            "links": [{"rel": "status", "href": f"/v2/operations/osd/status/{status_id}", "id": status_id}],
        }
    ]


Reply = httpx.Response | Exception
Driver = Callable[..., clc.ClcFleet]


@dataclass
class FakeClc:
    """A scripted CLC: per path a list of replies used in order (the last one repeats); records requests."""

    routes: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    tokens: Iterator[str] = field(default_factory=lambda: iter(f"token-{n}" for n in range(1, 100)))

    def __post_init__(self) -> None:
        self.routes.setdefault("/v2/authentication/login", [])

    def on(self, path: str, *replies: Reply) -> FakeClc:
        self.routes[path] = list(replies)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/authentication/login" and not self.routes[path]:
            return httpx.Response(
                200,
                json={
                    "userName": "u",
                    "accountAlias": "OSD",
                    "locationAlias": "VA1",
                    "roles": [],
                    "bearerToken": next(self.tokens),
                },
            )
        replies = self.routes.get(path)
        if not replies:
            return httpx.Response(404, json={"message": f"no route {path}"})
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def calls(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == path]

    @property
    def logins(self) -> int:
        return len(self.calls("/v2/authentication/login"))


@dataclass
class Waits:
    """The driver's sleeps, recorded."""

    seconds: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def fake() -> FakeClc:
    return FakeClc()


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def driver_factory(fake: FakeClc, waits: Waits) -> Iterator[Callable[..., clc.ClcFleet]]:
    made: list[clc.ClcFleet] = []

    def make(**overrides: Any) -> clc.ClcFleet:
        values: dict[str, Any] = {
            "base_url": "http://clc.test",
            "username": "u",
            "password": "p",
            "backoff_initial": 0.1,
            "backoff_max": 10.0,
            "max_attempts": 5,
            "rate_per_second": 1000.0,
            "burst": 1000,
            "poll_interval": 0.5,
            "operation_timeout": 5.0,
        }
        values.update(overrides)
        driver = clc.ClcFleet(clc.ClcConfig(**values), transport=httpx.MockTransport(fake.handler), sleep=waits)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.mark.parametrize("code", [500, 502, 503])
def test_a_5xx_is_retried_until_an_answer_comes(fake: FakeClc, waits: Waits, driver_factory: Driver, code: int) -> None:
    fake.on(
        SERVER_PATH,
        httpx.Response(code, json={"message": "An error has occurred."}),
        httpx.Response(code),
        httpx.Response(200, json=server_body()),
    )
    status = driver_factory().status(SERVER)
    assert status.boot_id == f"{SERVER}-boot-1" and status.power_state is PowerState.STARTED
    assert len(fake.calls(SERVER_PATH)) == 3


def test_backoff_grows_exponentially_with_bounded_jitter(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, *[httpx.Response(503)] * 4, httpx.Response(200, json=server_body()))
    driver_factory(max_attempts=5, backoff_initial=0.1).status(SERVER)
    assert len(waits.seconds) == 4
    for attempt, wait in enumerate(waits.seconds):
        base = 0.1 * 2**attempt
        assert base <= wait <= base + 0.1, (attempt, wait)


def test_backoff_is_capped(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, *[httpx.Response(500)] * 5, httpx.Response(200, json=server_body()))
    driver_factory(max_attempts=6, backoff_initial=1.0, backoff_max=2.0).status(SERVER)
    assert max(waits.seconds) <= 2.0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["connect", "read-timeout", "connect-timeout", "dropped"],
)
def test_connection_errors_and_timeouts_are_retried(fake: FakeClc, driver_factory: Driver, error: Exception) -> None:
    fake.on(SERVER_PATH, error, httpx.Response(200, json=server_body()))
    assert driver_factory().status(SERVER).name == SERVER
    assert len(fake.calls(SERVER_PATH)) == 2


def test_exhausted_retries_raise_a_transient_fleet_error(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(503))
    with pytest.raises(FleetError) as raised:
        driver_factory(max_attempts=4).status(SERVER)
    assert not isinstance(raised.value, FleetRefused)
    assert "after 4 attempts" in str(raised.value)
    assert len(fake.calls(SERVER_PATH)) == 4 and len(waits.seconds) == 3


@pytest.mark.parametrize("code", [400, 403, 404, 409])
def test_a_4xx_is_never_retried_and_is_refused(fake: FakeClc, waits: Waits, driver_factory: Driver, code: int) -> None:
    fake.on(SERVER_PATH, httpx.Response(code, json={"message": "nope"}))
    with pytest.raises(FleetRefused, match="nope"):
        driver_factory().status(SERVER)
    assert len(fake.calls(SERVER_PATH)) == 1 and waits.seconds == []


def test_a_429_is_retried_after_its_retry_after(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(429, headers={"Retry-After": "3"}, json={"message": "slow down"}),
            httpx.Response(200, json=server_body()))
    driver = driver_factory()
    before = driver.limiter.rate
    assert driver.status(SERVER).name == SERVER
    assert len(fake.calls(SERVER_PATH)) == 2 and driver.throttled == 1 and driver.limiter.throttled == 1
    waited = max(waits.seconds)  # (the others: the limiter's pacing at its lowered rate, a millisecond or two)
    assert 3.0 <= waited <= 3.3  # what the control plane asked, plus at most 10% jitter; not the 0.1 s backoff
    assert driver.limiter.rate < before  # the limiter slowed down


def test_a_503_with_retry_after_waits_that_long(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(503, headers={"Retry-After": "5"}), httpx.Response(200, json=server_body()))
    driver_factory().status(SERVER)
    assert max(waits.seconds) >= 5.0


def test_throttling_that_never_ends_is_transient(fake: FakeClc, waits: Waits, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(429, json={"message": "slow down"}))  # no Retry-After: a second each
    with pytest.raises(FleetError, match="429") as raised:
        driver_factory().status(SERVER)
    assert not isinstance(raised.value, FleetRefused)
    assert len(fake.calls(SERVER_PATH)) == 5  # max_attempts
    assert sum(1.0 <= w <= 1.1 for w in waits.seconds) == 4  # a second before each retry


def test_a_408_is_transient_and_not_retried_in_the_driver(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(408, json={"message": "timeout"}))
    with pytest.raises(FleetError) as raised:
        driver_factory().status(SERVER)
    assert not isinstance(raised.value, FleetRefused)
    assert len(fake.calls(SERVER_PATH)) == 1


def test_an_expired_token_means_one_new_login_and_one_replay(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(
        SERVER_PATH,
        httpx.Response(200, json=server_body()),
        httpx.Response(401, json={"message": "expired"}),
        httpx.Response(200, json=server_body(2)),
    )
    driver = driver_factory()
    driver.status(SERVER)
    assert driver.status(SERVER).boot_id == f"{SERVER}-boot-2"
    assert fake.logins == 2
    tokens = [r.headers["Authorization"] for r in fake.calls(SERVER_PATH)]
    assert tokens == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


def test_a_fresh_token_rejected_again_is_an_auth_error_not_a_loop(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(SERVER_PATH, httpx.Response(401, json={"message": "Authorization has been denied for this request."}))
    with pytest.raises(clc.ClcAuthError, match="denied"):
        driver_factory().status(SERVER)
    assert fake.logins == 2 and len(fake.calls(SERVER_PATH)) == 2


def test_bad_credentials_surface_clcs_message(fake: FakeClc, driver_factory: Driver) -> None:
    message = "We didn't recognize the username or password you entered. Please try again."
    fake.on("/v2/authentication/login", httpx.Response(400, json={"message": message}))
    with pytest.raises(clc.ClcAuthError, match="didn't recognize") as raised:
        driver_factory().status(SERVER)
    assert not isinstance(raised.value, FleetRefused)  # a settings problem: runs wait, they do not fail
    assert fake.logins == 1 and fake.calls(SERVER_PATH) == []


def test_login_is_retried_on_5xx_like_any_request(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(
        "/v2/authentication/login",
        httpx.Response(502),
        httpx.Response(200, json={"accountAlias": "OSD", "bearerToken": "t"}),
    )
    fake.on(SERVER_PATH, httpx.Response(200, json=server_body()))
    driver_factory().status(SERVER)
    assert fake.logins == 2


def test_requests_wait_for_the_token_bucket() -> None:
    now = [0.0]
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    bucket = throttle.TokenBucket(rate=2.0, capacity=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(7):
        bucket.acquire()
    assert waited == [0.5, 0.5, 0.5, 0.5]  # a burst of 3, then one every 1/rate seconds
    now[0] += 10.0  # idle: refills up to the capacity, not beyond
    for _ in range(3):
        bucket.acquire()
    assert len(waited) == 4


def test_a_wait_longer_than_the_limit_is_refused_as_transient() -> None:
    bucket = throttle.TokenBucket(rate=0.1, capacity=1, clock=lambda: 0.0, sleep=lambda s: None, max_wait=5.0)
    bucket.acquire()
    with pytest.raises(FleetError, match="rate limit"):
        bucket.acquire()


def test_every_attempt_takes_a_token(fake: FakeClc, waits: Waits) -> None:
    fake.on(SERVER_PATH, httpx.Response(500), httpx.Response(200, json=server_body()))
    config = clc.ClcConfig(
        "http://clc.test", "u", "p", rate_per_second=1.0, burst=1, backoff_initial=0.0, backoff_max=0.0
    )
    driver = clc.ClcFleet(config, transport=httpx.MockTransport(fake.handler), sleep=waits, clock=lambda: 0.0)
    driver.status(SERVER)  # time stands still: every token after the first is waited for
    driver.close()
    assert waits.seconds == [1.0, 0.0, 2.0]  # login free; 1st GET waits 1/rate; backoff 0; 2nd GET 2/rate


def test_backoff_helper_doubles_adds_jitter_and_caps() -> None:
    rng = random.Random(1)
    for failures in (1, 2, 3, 4):
        base = 0.5 * 2 ** (failures - 1)
        assert base <= throttle.backoff_seconds(failures, 0.5, 100.0, rng) <= base + 0.5
    assert throttle.backoff_seconds(30, 0.5, 5.0, rng) == 5.0


def test_operations_carry_the_idempotency_key_and_maintenance_waits_for_success(
    fake: FakeClc, waits: Waits, driver_factory: Driver
) -> None:
    fake.on("/v2/operations/OSD/servers/setMaintenance", httpx.Response(200, json=queued("va1-7")))
    fake.on(
        "/v2/operations/OSD/status/va1-7",
        httpx.Response(200, json={"status": "notStarted"}),
        httpx.Response(200, json={"status": "executing"}),
        httpx.Response(200, json={"status": "succeeded"}),
    )
    driver_factory().set_maintenance(SERVER, True, "VA1-000001:maintenance_on:0")
    (post,) = fake.calls("/v2/operations/OSD/servers/setMaintenance")
    assert post.headers[clc_wire.IDEMPOTENCY_HEADER] == "VA1-000001:maintenance_on:0"
    assert json.loads(post.content) == {"servers": [{"id": SERVER, "inMaintenanceMode": True}]}
    assert len(fake.calls("/v2/operations/OSD/status/va1-7")) == 3
    assert waits.seconds == [0.5, 0.5]


def test_a_failed_queue_status_is_transient(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on("/v2/operations/OSD/servers/powerOff", httpx.Response(200, json=queued("va1-8")))
    fake.on("/v2/operations/OSD/status/va1-8", httpx.Response(200, json={"status": "failed"}))
    with pytest.raises(FleetError, match="failed") as raised:
        driver_factory().power_off(SERVER, "k")
    assert not isinstance(raised.value, FleetRefused)


def test_an_operation_still_queued_after_the_timeout_is_transient(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on("/v2/operations/OSD/servers/setMaintenance", httpx.Response(200, json=queued("va1-9")))
    fake.on("/v2/operations/OSD/status/va1-9", httpx.Response(200, json={"status": "executing"}))
    with pytest.raises(FleetError, match="still pending"):
        driver_factory(poll_interval=1.0, operation_timeout=3.0).set_maintenance(SERVER, False, "k")
    assert len(fake.calls("/v2/operations/OSD/status/va1-9")) == 4


def test_reboot_returns_once_queued(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on("/v2/operations/OSD/servers/reboot", httpx.Response(200, json=queued("va1-3")))
    driver_factory().reboot(SERVER, "k")
    (post,) = fake.calls("/v2/operations/OSD/servers/reboot")
    assert json.loads(post.content) == [SERVER]
    assert not any("/status/" in r.url.path for r in fake.requests)  # the orchestrator waits for the boot id


def test_an_entry_not_queued_for_good_is_refused(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(
        "/v2/operations/OSD/servers/executePackage",
        httpx.Response(
            200,
            json=[
                {
                    "server": SERVER,
                    "isQueued": False,
                    "errorMessage": "The operation cannot be queued ...",
                    "patchaas": {"retryable": False, "reason": "unsupported OS"},
                }
            ],
        ),
    )
    run = PackageRun(package_id="p", execution_id="VA1-000001", cycle=1)
    with pytest.raises(FleetRefused, match="unsupported OS"):
        driver_factory().invoke_package(SERVER, "VA1-000001:package:1", run)


def test_an_entry_not_queued_for_now_is_transient(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on(
        "/v2/operations/OSD/servers/powerOn",
        httpx.Response(
            200, json=[{"server": SERVER, "isQueued": False, "errorMessage": "The operation cannot be queued ..."}]
        ),
    )
    with pytest.raises(FleetError) as raised:
        driver_factory().power_on(SERVER, "k")
    assert not isinstance(raised.value, FleetRefused)


def test_execute_package_sends_our_parameters(fake: FakeClc, driver_factory: Driver) -> None:
    fake.on("/v2/operations/OSD/servers/executePackage", httpx.Response(200, json=queued()))
    run = PackageRun(
        package_id="94bd395f-9b54-4693-94ae-4f3aa93fc239",
        execution_id="VA1-000001",
        cycle=2,
        exclude_kbs=("KB3135998", "KB3146723"),
        parameters={"patch.debug.mode": "true"},
    )
    driver_factory().invoke_package(SERVER, "VA1-000001:package:2", run)
    body = json.loads(fake.calls("/v2/operations/OSD/servers/executePackage")[0].content)
    assert body == {
        "servers": [SERVER],
        "package": {
            "packageId": "94bd395f-9b54-4693-94ae-4f3aa93fc239",
            "parameters": {
                "patch.debug.mode": "true",
                "patchaas.updateService": "Default",
                "patchaas.executionId": "VA1-000001",
                "patchaas.cycle": "2",
                "patchaas.excludeKBs": "KB3135998,KB3146723",
                "patchaas.idempotencyKey": "VA1-000001:package:2",
            },
        },
    }


def test_a_package_run_never_received_is_none(fake: FakeClc, driver_factory: Driver) -> None:
    path = "/v2/patchaas/OSD/servers/VA1OSDPATCH01/packageRuns/VA1-000001:package:1"
    fake.on(path, httpx.Response(404, json={"message": "No package run", "code": clc_wire.PACKAGE_RUN_NOT_FOUND}))
    assert driver_factory().cycle_result(SERVER, "VA1-000001:package:1") is None


def test_a_package_run_on_an_unknown_server_is_refused(fake: FakeClc, driver_factory: Driver) -> None:
    path = "/v2/patchaas/OSD/servers/VA1OSDPATCH01/packageRuns/k"
    fake.on(path, httpx.Response(404, json={"message": "The server was not found.", "code": "serverNotFound"}))
    with pytest.raises(FleetRefused):
        driver_factory().cycle_result(SERVER, "k")


def test_a_package_run_report_is_parsed(fake: FakeClc, driver_factory: Driver) -> None:
    report = {
        "key": "k",
        "state": "finished",
        "started_at": "2026-11-10T09:00:00Z",
        "finished_at": "2026-11-10T09:01:00Z",
        "result_code": 3,
        "hresult": "0x80070643",
        "reboot_required": True,
        "excluded": [],
        "updates": [{"kb": "KB3135998", "title": "t", "result_code": 4, "hresult": -2147023293}],
    }
    fake.on("/v2/patchaas/OSD/servers/VA1OSDPATCH01/packageRuns/k", httpx.Response(200, json=report))
    parsed = driver_factory().cycle_result(SERVER, "k")
    assert parsed is not None and parsed.state is CycleState.FINISHED
    assert parsed.hresult == 0x80070643 and parsed.updates[0].hresult == 0x80070643


def test_a_server_answer_without_our_extension_is_refused(fake: FakeClc, driver_factory: Driver) -> None:
    body = server_body()
    del body["patchaas"]
    fake.on(SERVER_PATH, httpx.Response(200, json=body))
    with pytest.raises(FleetRefused, match="boot id"):
        driver_factory().status(SERVER)


def test_settings_configure_the_driver() -> None:
    settings = Settings(
        fleet="clc",
        clc_base_url="http://127.0.0.1:9",
        clc_username="u",
        clc_password=SecretStr("p"),
        clc_retry_attempts=3,
        clc_rate_per_second=5.0,
    )
    config = clc.ClcConfig.from_settings(settings)
    assert (config.max_attempts, config.rate_per_second, config.password) == (3, 5.0, "p")
    assert config.operation_timeout + config.retry_deadline + config.read_timeout < settings.lease_seconds


def test_the_driver_needs_a_url_and_credentials() -> None:
    with pytest.raises(ValueError, match="PATCHAAS_CLC_BASE_URL"):
        clc.ClcConfig.from_settings(Settings(fleet="clc"))
