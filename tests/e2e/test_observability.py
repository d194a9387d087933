"""Observability of a real run (issue 15): `patchaas api`, one `patchaas worker` (2 pool processes, the `clc`
driver against a `patchaas simulator`, the report channel on) and `patchaas beat` on PostgreSQL and Redis,
with JSON logs and the metrics exporters on. A client logs in (and another one fails until throttled),
queues eight servers over HTTP; mid-run the worker is frozen (SIGSTOP) and beat's fleet-level gauges are
compared with the database; at the end every metric the issue lists is scraped from the API, the worker
exporter and beat, and checked against what the database and the simulator's record say was done. The logs
of the three processes are JSON, every line about an execution names it with its server, account, state and
step, and no secret appears in any of them.

One run (module fixture, ~30 s) serves every test of the module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.persistence import models
from orchestrator.services import auth
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation.mailsink import MailSink
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from tests import scrape
from tests.conftest import REDIS_DB, REDIS_URL, truncate_all
from tests.e2e.harness import (
    CLC_USER,
    Cluster,
    active_executions,
    free_port,
    install_fleet,
    run_cli,
    start_clc_simulator,
    use_clc_fleet,
    wait_until,
)

PASSWORDS = {"jane": "jane's long e2e password", "mallory": "mallory's real password"}
WRONG = "mallory-guesses-wrong-1234"
SCENARIOS = {Scenario.FLAKY_KB: 1, Scenario.BROKEN_KB: 1, Scenario.POWERED_OFF: 1, Scenario.PENDING_REBOOT: 1,
             Scenario.UNSUPPORTED_OS: 1}
SERVERS = 8
DRIVER = {"PATCHAAS_CLC_POLL_INTERVAL_SECONDS": "0.1", "PATCHAAS_CLC_RETRY_INITIAL_SECONDS": "0.05",
          "PATCHAAS_CLC_RATE_PER_SECOND": "100", "PATCHAAS_LEASE_SECONDS": "20",
          "PATCHAAS_SHORT_COUNTDOWN_SECONDS": "0"}  # every wait is a timer the tick hands off (as in production)
EXECUTION_ID = re.compile(r"\b[A-Z]{2}\d-\d{6}\b")
SSH_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBwYXRjaGFhcy1lMmUtbm90LWEtcmVhbC1rZXktYnV0LXNlY3JldAAAAJj=
-----END OPENSSH PRIVATE KEY-----
"""


def cli(cluster: Cluster, *args: str, stdin: str | None = None) -> None:
    done = run_cli(cluster, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)


def start_api(cluster: Cluster) -> str:
    port = free_port()
    cluster.start("api", "api", "--port", str(port), "--log-level", "info")
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert cluster.procs["api"].poll() is None, cluster.log("api")[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    wait_until(serving, timeout=30, interval=0.1, on_timeout=lambda: cluster.log("api")[-3000:])
    return url


def scrape_when(url: str, ready: Any, timeout: float = 20) -> scrape.Samples:
    found: dict[str, scrape.Samples] = {}

    def ok() -> bool:
        try:
            found["s"] = scrape.fetch(url)
        except OSError:
            return False
        return bool(ready(found["s"]))

    wait_until(ok, timeout=timeout, interval=0.2,
               on_timeout=lambda: f"{url}: {sorted(scrape.names(found.get('s', {})))}")
    return found["s"]


def db_facts(pg: str) -> dict[str, Any]:
    engine = sa.create_engine(pg)
    e = models.Execution
    with engine.connect() as conn:
        facts = {
            "active": Counter(dict(conn.execute(sa.select(e.state, sa.func.count()).where(e.ended_at.is_(None))
                                                .group_by(e.state)).all())),
            "ended": Counter(dict(conn.execute(sa.select(e.state, sa.func.count()).where(e.ended_at.is_not(None))
                                               .group_by(e.state)).all())),
            "executions": conn.execute(sa.select(sa.func.count()).select_from(e)).scalar_one(),
            "initiations": conn.execute(sa.select(sa.func.count()).select_from(models.Initiation)).scalar_one(),
            "events": conn.execute(sa.select(sa.func.count()).select_from(models.ExecutionEvent)).scalar_one(),
            "reports": conn.execute(sa.select(sa.func.count()).select_from(models.CycleReportRecord)).scalar_one(),
            "emails_sent": conn.execute(sa.select(sa.func.count()).select_from(models.Outbox)
                                        .where(models.Outbox.sent_at.is_not(None))).scalar_one(),
            "digests": set(conn.execute(sa.select(models.Token.token_hash)).scalars())
            | set(conn.execute(sa.select(models.ReportToken.token_hash)).scalars()),
        }
    engine.dispose()
    return facts


@pytest.fixture(scope="module")
def run(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import redis

    truncate_all(pg_url)
    broker = f"{REDIS_URL}/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    tmp = tmp_path_factory.mktemp("observability")
    keys = tmp / "keys"
    keys.mkdir()
    (keys / "web.key").write_text(SSH_KEY)
    with MailSink() as sink:
        cluster = Cluster.for_test(pg_url, broker, sink.url, tmp / "cluster",
                                   {"PATCHAAS_LOG_FORMAT": "json", "PATCHAAS_SSH_KEY_DIR": str(keys)})
        try:
            yield observe(cluster, pg_url, sink)
        finally:
            cluster.stop_all()
    redis.Redis.from_url(broker).flushdb()


def observe(cluster: Cluster, pg: str, sink: MailSink) -> dict[str, Any]:
    specs = build_fleet_specs(15, SERVERS, scenarios=SCENARIOS)
    fleet = install_fleet(pg, specs)
    cli(cluster, "user", "create", "jane", "--alias", "OSD", "--role", "ServerAdmin", "--password-stdin",
        stdin=PASSWORDS["jane"] + "\n")
    cli(cluster, "user", "create", "mallory", "--alias", "OSD", "--role", "ServerAdmin", "--password-stdin",
        stdin=PASSWORDS["mallory"] + "\n")
    simulator = start_clc_simulator(cluster, "--token-ttl=3", "--latency-ms=20", "--seed=15")
    api = start_api(cluster)
    use_clc_fleet(cluster, simulator, PATCHAAS_REPORT_BASE_URL=api, **DRIVER)
    worker_port, beat_port = free_port(), free_port()
    cluster.env["PATCHAAS_METRICS_PORT"] = str(worker_port)
    cluster.start("w1", "worker", "--concurrency=2", "--loglevel=INFO", "--hostname=w1@%h")
    cluster.env["PATCHAAS_METRICS_PORT"] = str(beat_port)
    cluster.start("beat", "beat", "--loglevel=INFO", f"--schedule={cluster.logdir / 'beat-schedule'}")
    worker_url, beat_url = f"http://127.0.0.1:{worker_port}/metrics", f"http://127.0.0.1:{beat_port}/metrics"
    scrape_when(worker_url, lambda s: "patchaas_steps_total" in scrape.names(s))
    scrape_when(beat_url, lambda s: scrape.value(s, "patchaas_fleet_gauges_up") == 1)

    out: dict[str, Any] = {"specs": specs, "cluster": cluster, "tokens": []}
    with httpx.Client(base_url=api, timeout=10) as client:
        for _ in range(7):  # five failures are free, the sixth locks mallory for 2 s: the seventh is a 429
            client.post("/v2/authentication/login", json={"username": "mallory", "password": WRONG})
        answer = client.post("/v2/authentication/login", json={"username": "jane", "password": PASSWORDS["jane"]})
        assert answer.status_code == 200, answer.text
        token = answer.json()["bearerToken"]
        out["tokens"].append(token)
        headers = {"Authorization": f"Bearer {token}"}
        queued = client.post("/v2/operations/osd/servers/executePackage", headers=headers, json={
            "servers": [s.name for s in specs], "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}})
        assert queued.status_code == 200, queued.text
        out["queued"] = {a["server"]: a["executionId"] for a in queued.json() if a["isQueued"]}
        # a token in a query string reaches uvicorn's access log: it must be masked there
        client.get(f"/v2/servers/osd/{specs[0].name}?access_token={token}", headers=headers)
        client.get(f"/v2/servers/osd/{specs[0].name}", headers=headers)

        # mid-run: freeze the worker (its pool too), let beat tick on, compare the gauges with the database
        def some_done() -> bool:
            facts = db_facts(pg)
            return facts["events"] >= 4 and sum(facts["active"].values()) >= 4

        wait_until(some_done, timeout=40, interval=0.1, on_timeout=lambda: cluster.log("w1")[-3000:])
        os.killpg(cluster.procs["w1"].pid, signal.SIGSTOP)
        try:
            time.sleep(3.5)  # longer than the re-drive (3 s): once thawed, the tick claims what waited
            out["frozen_db"] = db_facts(pg)
            out["frozen"] = scrape.fetch(beat_url)
            out["frozen_after"] = db_facts(pg)
        finally:
            os.killpg(cluster.procs["w1"].pid, signal.SIGCONT)
        wait_until(lambda: not active_executions(pg), timeout=60, interval=0.25,
                   on_timeout=lambda: f"{active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
        wait_until(lambda: db_facts(pg)["emails_sent"] == 2 * len(out["queued"]), timeout=30,
                   on_timeout=lambda: str(db_facts(pg)))
        out["compliance"] = client.get("/v2/patchaas/osd/compliance", headers=headers).json()
    out["db"] = db_facts(pg)
    out["effects"] = Counter(e.kind for e in fleet.effects())
    out["worker"] = scrape_when(worker_url, lambda s: scrape.value(s, "patchaas_emails_total", outcome="sent")
                                >= 2 * len(out["queued"]))
    out["beat"] = scrape_when(beat_url, lambda s: scrape.value(s, "patchaas_outbox_backlog", outbox="email") == 0
                              and scrape.value(s, "patchaas_active_executions") == 0)
    out["api"] = scrape.fetch(f"{api}/metrics")
    out["beat_after"] = time.time()
    cluster.stop_all()
    out["logs"] = {name: cluster.log(name) for name in ("api", "w1", "beat")}
    return out


# --- metrics ---------------------------------------------------------------------------------------------

def test_the_api_counts_requests_by_route_template_logins_and_report_posts(run: dict[str, Any]) -> None:
    api = run["api"]
    route = "/v2/operations/{alias}/servers/executePackage"
    assert scrape.value(api, "patchaas_http_requests_total", route=route, method="POST", status="200") == 1
    assert scrape.value(api, "patchaas_http_request_duration_seconds_count", route=route) == 1
    assert scrape.value(api, "patchaas_http_request_duration_seconds_sum", route=route) > 0
    assert scrape.value(api, "patchaas_http_requests_total", route="/v2/servers/{alias}/{serverId}") == 2
    assert scrape.value(api, "patchaas_logins_total", outcome="ok") == 1
    assert scrape.value(api, "patchaas_logins_total", outcome="bad_credentials") >= 5
    assert scrape.value(api, "patchaas_logins_total", outcome="throttled") >= 1
    # every report the servers posted was recorded once (the channel's own record)
    assert scrape.value(api, "patchaas_report_posts_total", outcome="recorded") == run["db"]["reports"] > 0
    assert scrape.value(api, "patchaas_report_posts_total", outcome="unauthorized") == 0


def test_the_worker_counts_the_steps_that_were_run(run: dict[str, Any]) -> None:
    w, db, effects, queued = run["worker"], run["db"], run["effects"], len(run["queued"])

    def steps(command: str, outcome: str = "ok") -> float:
        return scrape.value(w, "patchaas_steps_total", command=command, outcome=outcome)

    # each run turned maintenance on once and off once, started each cycle once, rebooted as the simulator saw
    assert steps("set_maintenance") == 2 * queued == effects[EffectKind.MAINTENANCE_ON] * 2
    assert steps("invoke_update_package") == db["initiations"]
    assert steps("reboot_server") == effects[EffectKind.REBOOT] > 0
    assert steps("power_on") == effects[EffectKind.POWER_ON] == 1
    assert steps("power_off") == effects[EffectKind.POWER_OFF] == 1
    total = scrape.value(w, "patchaas_steps_total", outcome="ok")
    assert total >= db["events"]  # every saved transition was an ok step (the rest: polls that waited on)
    every = scrape.value(w, "patchaas_steps_total")
    assert scrape.value(w, "patchaas_step_duration_seconds_count") == every
    assert 0 < scrape.value(w, "patchaas_step_duration_seconds_sum") < every * 5
    assert scrape.value(w, "patchaas_reaper_failures_total") == 0
    # fleet calls: what the clc driver did, by operation
    calls = {(ls["operation"], ls["outcome"]): v for (n, lsf), v in w.items() if n == "patchaas_fleet_calls_total"
             for ls in [dict(lsf)] if ls["driver"] == "clc"}
    assert calls[("set_maintenance", "ok")] == 2 * queued
    assert calls[("reboot", "ok")] == effects[EffectKind.REBOOT]
    assert calls[("invoke_package", "ok")] == db["initiations"]
    assert calls[("status", "ok")] + calls.get(("statuses", "ok"), 0) > 0
    assert scrape.value(w, "patchaas_fleet_call_duration_seconds_count", driver="clc") == sum(calls.values())
    # the tick: it ran, claimed executions, lately
    assert scrape.value(w, "patchaas_tick_duration_seconds_count") >= 3
    assert scrape.value(w, "patchaas_tick_claimed_executions_count") == scrape.value(
        w, "patchaas_tick_duration_seconds_count")
    assert scrape.value(w, "patchaas_tick_claimed_executions_sum") >= 1
    assert run["beat_after"] - scrape.value(w, "patchaas_tick_last_run_timestamp_seconds") < 10
    assert scrape.value(w, "patchaas_emails_total", outcome="sent") == db["emails_sent"] == 2 * queued
    assert scrape.value(w, "patchaas_smtp_send_duration_seconds_count") == db["emails_sent"]
    assert {s["task"] for s in scrape.series(w, "patchaas_task_retries_total")} >= {"patchaas.advance", "patchaas.tick"}


def test_beats_fleet_gauges_match_the_database(run: dict[str, Any]) -> None:
    frozen, before, after = run["frozen"], run["frozen_db"], run["frozen_after"]
    assert before["active"] == after["active"]  # nothing moved while the worker was frozen
    states = {s["state"]: scrape.value(frozen, "patchaas_active_executions", state=s["state"])
              for s in scrape.series(frozen, "patchaas_active_executions")}
    assert {k: v for k, v in states.items() if v} == dict(before["active"])
    assert "awaiting_boot" in states and "requested" in states  # every active state is a series, 0 or not
    assert scrape.value(frozen, "patchaas_timer_lag_seconds") > 1.0  # due timers wait for the frozen worker
    assert scrape.value(frozen, "patchaas_timers_due") >= 1
    assert scrape.value(frozen, "patchaas_fleet_gauges_query_seconds") < 1.0
    end = run["beat"]
    assert scrape.value(end, "patchaas_active_executions") == 0
    assert scrape.value(end, "patchaas_timer_lag_seconds") == 0
    assert scrape.value(end, "patchaas_outbox_backlog", outbox="email") == 0
    assert scrape.value(end, "patchaas_outbox_oldest_age_seconds", outbox="email") == 0
    assert {s["outbox"] for s in scrape.series(end, "patchaas_outbox_backlog")} == {"email", "event", "webhook"}
    assert scrape.value(end, "patchaas_servers_left_in_maintenance") == 0
    counts = Counter(s["status"] for s in run["compliance"]["servers"])  # what `GET …/compliance` answers
    for status in ("compliant", "non_compliant", "unknown"):
        assert scrape.value(end, "patchaas_servers_compliance", status=status) == counts[status], status
    assert counts["non_compliant"] >= 1 and counts["unknown"] >= 1  # the broken KB's run; the refused server
    assert scrape.value(end, "patchaas_beat_sent_total", task="patchaas.tick") >= 3


def test_no_label_names_a_server_an_execution_or_an_account(run: dict[str, Any]) -> None:
    servers = {s.name.lower() for s in run["specs"]}
    for source in ("api", "worker", "beat", "frozen"):
        for (name, labels), _ in run[source].items():
            for key, value in labels:
                assert not EXECUTION_ID.search(value), (source, name, key, value)
                assert value.lower() not in servers and not any(s in value.lower() for s in servers), (name, value)
                assert value.lower() != "osd", (name, key)


# --- logs ------------------------------------------------------------------------------------------------

def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_logs_are_json_and_every_line_about_an_execution_names_it(run: dict[str, Any]) -> None:
    for name, text in run["logs"].items():
        lines = [line for line in text.splitlines() if line.strip()]
        parsed = json_lines(text)
        stray = [line for line in lines if not line.startswith("{")]
        # Celery prints its shutdown notice itself (not through logging); nothing else is outside JSON
        assert all("shutdown" in line.lower() for line in stray), (name, stray[:5])
        assert parsed, name
        for line in parsed:
            assert {"time", "level", "logger", "message"} <= set(line), line
            if "execution_id" in line or (EXECUTION_ID.search(line["message"])
                                          and line["logger"].startswith("orchestrator.engine")):
                assert {"execution_id", "server", "account", "state", "step"} <= set(line), line
    steps = [line for line in json_lines(run["logs"]["w1"]) if line["message"].startswith("step ")]
    assert steps and all(line["account"] == "OSD" and line["execution_id"] in run["queued"].values()
                         for line in steps)
    ids = {line["execution_id"] for line in steps}
    assert ids == set(run["queued"].values())  # one query finds each run's whole story
    # the driver's own lines (httpx, in the clc driver) carry the step they were written in
    reads = [(line, m.group(1)) for line in json_lines(run["logs"]["w1"]) if line["logger"] == "httpx"
             for m in [re.search(r"GET \S+/v2/servers/OSD/(\w+) ", line["message"])] if m]
    assert reads and all(line["server"] == server for line, server in reads if "server" in line)
    assert sum("execution_id" in line for line, _ in reads) > len(reads) / 2


def test_no_secret_reaches_any_log(run: dict[str, Any]) -> None:
    text = "\n".join(run["logs"].values())
    secrets = [*PASSWORDS.values(), WRONG, CLC_USER[1], *run["tokens"], *SSH_KEY.strip().splitlines()[1:-1]]
    for secret in secrets:
        assert secret not in text, f"a secret reached the logs: {secret[:6]}…"
    assert "access_token=***" in text  # the query-string token was written, masked
    # every token-shaped string in the logs (256-bit URL-safe, as login and report tokens are) is no token
    # we issued: its digest is in neither tokens nor report_tokens
    candidates = set(re.findall(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text))
    leaked = [c for c in candidates if auth.token_digest(c) in run["db"]["digests"]]
    assert not leaked and run["db"]["digests"], leaked
    assert Path(run["cluster"].env["PATCHAAS_SSH_KEY_DIR"], "web.key").read_text() == SSH_KEY
