"""The CLC simulator's server-side rate limit (429 with `Retry-After`, per account) on a real uvicorn on
loopback, and the `clc` driver against it: many threads at once and the engine's batch rounds end every
call and every run, each 429 is waited out for what `Retry-After` asked, and the adaptive limiter keeps
the refused requests few."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from orchestrator import bootstrap
from orchestrator.engine import rounds
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import clc_faults
from simulation import fleet as simulated
from simulation.clc_rate_limit import LOGIN_BUCKET, AccountRateLimit, account_of
from simulation.specs import Scenario
from tests import support
from tests.integration.engine.test_batch import BatchDispatcher, drive
from tests.integration.simulation.test_clc_simulator import USER, SimFactory, names, sim_factory  # noqa: F401
from workers import mail
from workers.fleet import clc


def driver_for(url: str, sleep: object = time.sleep, **overrides: object) -> clc.ClcFleet:
    values: dict[str, object] = {"rate_per_second": 1000.0, "rate_start": 5.0, "burst": 1, "max_attempts": 10,
                                 "retry_deadline": 60.0, "backoff_initial": 0.01, "backoff_max": 0.05,
                                 "poll_interval": 0.05, "concurrency": 32}
    values.update(overrides)
    return clc.ClcFleet(clc.ClcConfig(url, USER.username, USER.password, **values), sleep=sleep)  # type: ignore[arg-type]


def test_requests_over_the_rate_are_refused_with_429_and_retry_after(sim_factory: SimFactory) -> None:  # noqa: F811
    sim = sim_factory(faults=clc_faults.Faults(rate_limit=0.5, rate_limit_burst=2))  # one every 2 s, 2 at once
    sim.authorize()  # the login's bucket is not the account's
    server = names(sim)[0]
    assert sim.client.get(f"/v2/servers/OSD/{server}").status_code == 200
    assert sim.client.get(f"/v2/servers/osd/{server}").status_code == 200  # the alias in any case: one account
    refused = sim.client.get(f"/v2/servers/OSD/{server}")
    assert refused.status_code == 429 and refused.json()["message"].startswith("The request was throttled")
    assert refused.headers["Retry-After"] == "2"  # whole seconds until the next token, rounded up
    counts = sim.client.get("/simulator/faults").json()["rateLimit"]  # never limited, never faulted
    assert counts["rate"] == 0.5 and (counts["accepted"], counts["refused"]) == (3, 1)
    assert counts["byAccount"] == {"OSD": {"accepted": 2, "refused": 1}, LOGIN_BUCKET: {"accepted": 1, "refused": 0}}


def test_the_bucket_refills_at_the_rate_up_to_its_burst() -> None:
    now = [0.0]
    limit = AccountRateLimit(rate=10.0, burst=3, clock=lambda: now[0])
    assert [limit.admit("OSD") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.admit("OSD") == 0.1 and limit.admit("ABC") == 0.0  # per account
    now[0] += 0.25
    assert limit.admit("OSD") == 0.0 and limit.admit("OSD") == 0.0 and limit.admit("OSD") > 0
    now[0] += 60
    assert [limit.admit("OSD") for _ in range(4)][-1] > 0  # idle: never more than the burst
    assert account_of("/v2/operations/osd/servers/reboot") == "OSD"
    assert account_of("/v2/authentication/login") == LOGIN_BUCKET


def test_many_threads_through_the_driver_all_succeed_and_honour_retry_after(sim_factory: SimFactory) -> None:  # noqa: F811
    sim = sim_factory(faults=clc_faults.Faults(rate_limit=40, latency_ms=20), count=20)
    waits: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:  # really sleeps; records what the driver waited for
        with lock:
            waits.append(seconds)
        time.sleep(seconds)

    driver = driver_for(sim.url, sleep, rate_start=200.0)  # starts far above the limit: it must be refused
    servers = names(sim) * 15
    try:
        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(driver.status, servers))
    finally:
        driver.close()
    assert [s.name for s in statuses] == servers  # every call answered, none failed
    counts = sim.client.get("/simulator/faults").json()["rateLimit"]
    assert counts["refused"] == driver.throttled > 0  # every 429 reached the driver …
    assert counts["byAccount"]["OSD"]["accepted"] == len(servers)  # … and was retried until accepted
    assert sum(1 for w in waits if w >= 1.0) >= driver.throttled  # each waited its Retry-After (≥ 1 s)
    assert driver.limiter.rate < 200.0  # the limiter came down toward the control plane's rate
    assert counts["refused"] < len(servers) // 2  # it adapted: far fewer refused than accepted


def test_the_engine_in_batches_through_a_rate_limited_control_plane_ends_every_run(
    sim_factory: SimFactory, pg: str,  # noqa: F811
) -> None:
    clock = support.FakeClock()
    sim = sim_factory(faults=clc_faults.Faults(rate_limit=40, latency_ms=10), scenarios={Scenario.NORMAL: 6},
                      count=6, timings=simulated.SimTimings.instant(), clock=clock.seconds)
    driver = driver_for(sim.url, rate_start=20.0)
    dispatcher = BatchDispatcher()
    settings = support.test_settings(pg)
    container = bootstrap.build(settings, dispatcher=dispatcher, fleet=driver, mailer=mail.MemoryMailer(),
                                clock=clock)
    specs = sim.fleet.specs()
    support.register(container, specs)
    try:
        answers = container.service.execute_package_on_groups(
            "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test")
        dispatcher.steps.clear()  # a few ids are handed off one message each: run them as one batch instead
        dispatcher.batches.append([a.execution_id for a in answers if a.is_queued])
        assert rounds.fleet_width(container.engine.fleet, 8) == 32  # the round's pool: the driver's concurrency
        drive(container, dispatcher, clock)
        outcomes = Counter(container.service.detail("OSD", a.server, a.execution_id).status
                           for a in answers if a.execution_id is not None)
        assert outcomes == Counter({"completed": len(specs)})  # zero failed runs
        for spec in specs:
            kinds = Counter(e.kind for e in sim.fleet.effects(spec.name))
            assert kinds["maintenance_on"] == kinds["maintenance_off"] == 1
    finally:
        container.close()
        driver.close()
    counts = sim.client.get("/simulator/faults").json()["rateLimit"]
    assert counts["refused"] == driver.throttled, counts
