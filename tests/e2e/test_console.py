"""The operator console in a real browser: Debian's chromium driven by Playwright, against the REST app served
by uvicorn on a loopback port, over the embedded runtime (the production Celery tasks on worker and beat
threads, the in-process broker) on the test's PostgreSQL, with a simulated fleet whose reboots and package
runs take visible seconds. An operator logs in (and fails to), starts a group action from the form and watches
the overview reach the end without reloading it, reads a server's history and an execution's detail (checked
against the REST answers), cancels a run; another account's pages are 404 and a form without its CSRF token is
refused. Screenshots of the overview, the history and the detail are taken (to docs/images/, shown in the README,
when PATCHAAS_SCREENSHOTS=docs/images).

Nothing here asserts how long anything took: waits are generous bounds on a condition."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import db
from orchestrator.services import auth, inventory
from orchestrator.settings import Settings
from simulation import clc_server
from simulation import fleet as simulated
from simulation.catalog import WINDOWS_2012R2
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests.conftest import truncate_all

CHROMIUM = os.environ.get("PATCHAAS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The screenshots land in a temporary folder, so `make test` leaves the tree clean; to refresh the README's,
# run with PATCHAAS_SCREENSHOTS=docs/images.
IMAGES = Path(os.environ.get("PATCHAAS_SCREENSHOTS") or Path(tempfile.gettempdir()) / "patchaas-screenshots")
PASSWORDS = {"jane": "jane's long password", "xavier": "xavier's long password"}
WAIT_MS = 60_000  # a bound on waiting for a condition, not a measurement
# 01 never comes back from its first reboot (the run to cancel); 02 has a KB that always fails; 03-05 normal.
SPECS = build_fleet_specs(13, 5, scenarios={Scenario.NEVER_RETURNS: 1, Scenario.BROKEN_KB: 1})
PLACEMENT = {"VA1OSDPATCH01": "va1-0009", "VA1OSDPATCH02": "va1-0001", "VA1OSDPATCH03": "va1-0001",
             "VA1OSDPATCH04": "va1-0002", "VA1OSDPATCH05": "va1-0002"}


@dataclass
class Site:
    url: str
    container: Container
    browser: Any

    @contextmanager
    def rest(self, username: str = "jane") -> Iterator[httpx.Client]:
        """A REST client logged in as `username`."""
        with httpx.Client(base_url=self.url, timeout=10) as client:
            answer = client.post("/v2/authentication/login",
                                 json={"username": username, "password": PASSWORDS[username]})
            assert answer.status_code == 200, answer.text
            client.headers["Authorization"] = f"Bearer {answer.json()['bearerToken']}"
            yield client


def settings_for(database_url: str, smtp_url: str) -> Settings:
    return Settings(database_url=database_url, broker_url="memory://", smtp_url=smtp_url, poll_interval_seconds=0.25,
                    tick_seconds=0.5,
                    redrive_seconds=3, lease_seconds=30, retry_backoff_seconds=0.5, reboot_timeout_seconds=300,
                    package_timeout_seconds=60, power_timeout_seconds=30, settle_seconds=0.3)


def seed(container: Container) -> None:
    with container.sessions.begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, "OSD", "OSD Inc", "VA1", "ops@osd.example", now)
        inventory.ensure_account(session, "XYZ", "XYZ Corp", "VA1", "ops@xyz.example", now)
        inventory.ensure_group(session, "OSD", "va1-0001", "Production")
        inventory.ensure_group(session, "OSD", "va1-0002", "Web tier", "va1-0001")
        inventory.ensure_group(session, "OSD", "va1-0009", "Lab")
        inventory.ensure_group(session, "XYZ", "va1-0100", "XYZ servers")
        inventory.register_servers(session, "OSD", (
            inventory.ServerSpec(s.name, s.os_type, s.power_state.value, PLACEMENT[s.name]) for s in SPECS))
        inventory.register_servers(session, "XYZ", [inventory.ServerSpec("VA1XYZWEB01", WINDOWS_2012R2, "started",
                                                                         "va1-0100")])
    accounts = auth.AuthService(container.sessions, container.service.clock, timedelta(days=1),
                                hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORDS["jane"])
    accounts.create_user("xavier", "XYZ", ["AccountAdmin"], PASSWORDS["xavier"])


@pytest.fixture(scope="module")
def site(pg_url: str) -> Iterator[Site]:
    from playwright.sync_api import expect, sync_playwright

    from workers.embedded import embedded

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: `make test` installs Debian's chromium (scripts/ensure-services)")
    truncate_all(pg_url)
    expect.set_options(timeout=WAIT_MS)
    fleet = simulated.SimulatedFleet.create(SPECS, MemoryStore(), simulated.SimTimings.demo(), seed=13)
    with MailSink() as sink, embedded(settings_for(pg_url, sink.url), fleet=fleet) as container:
        seed(container)
        with clc_server.running(create_app(container)) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield Site(url, container, browser)
            finally:
                browser.close()


@pytest.fixture
def browser_page(site: Site) -> Iterator[Any]:
    """A fresh browser context (no cookies) and a page in it."""
    context = site.browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site.url)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in(page: Any, username: str = "jane", password: str | None = None, target: str = "/console/overview") -> Any:
    answer = page.goto(target)
    assert "/console/login" in page.url  # sent to the login form first
    page.fill("#username", username)
    page.fill("#password", password or PASSWORDS[username])
    with page.expect_navigation():
        page.click("#login")
    return answer


def test_log_in_wrongly_then_rightly(browser_page: Any) -> None:
    from playwright.sync_api import expect

    log_in(browser_page, "jane", "not jane's password")
    expect(browser_page.locator("#login-error")).to_have_text(auth.CLC_BAD_LOGIN)
    assert "/console/login" in browser_page.url
    assert not [c for c in browser_page.context.cookies() if c["name"] == "patchaas_session"]
    browser_page.fill("#username", "jane")
    browser_page.fill("#password", PASSWORDS["jane"])
    with browser_page.expect_navigation():
        browser_page.click("#login")
    assert browser_page.url.endswith("/console/overview")
    expect(browser_page.locator("h1")).to_have_text("Fleet overview · OSD")
    cookie = next(c for c in browser_page.context.cookies() if c["name"] == "patchaas_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert browser_page.evaluate("document.cookie") == ""  # scripts cannot read the session


def test_a_group_action_from_the_form_reaches_the_end_live_on_the_overview(site: Site, browser_page: Any) -> None:
    from playwright.sync_api import expect

    overview = browser_page
    log_in(overview)
    overview.evaluate("window.__notReloaded = true")
    actions = overview.context.new_page()
    actions.goto("/console/actions")
    actions.check("input[name=target][value=groups]")
    actions.fill("#groups", "va1-0001")
    actions.fill("#maxConcurrency", "2")
    with actions.expect_navigation():
        actions.click("#execute")
    expect(actions.locator("h1")).to_have_text("4 queued, 0 refused")
    queued = actions.locator("#answers a").all_inner_texts()
    assert len(queued) == 4
    rows = overview.locator("#runs tr[data-execution]")
    for execution_id in queued:  # the page loaded before these existed: they arrive without a reload
        expect(overview.locator(f'#runs tr[data-execution="{execution_id}"]')).to_have_count(1)
    for execution_id in queued:
        expect(overview.locator(f'#runs tr[data-execution="{execution_id}"]')).to_have_attribute(
            "data-status", re.compile(r"^(completed|failed)$"))
    statuses = {r.get_attribute("data-server"): r.get_attribute("data-status") for r in rows.all()}
    assert statuses == {"VA1OSDPATCH02": "failed", "VA1OSDPATCH03": "completed", "VA1OSDPATCH04": "completed",
                        "VA1OSDPATCH05": "completed"}
    assert overview.evaluate("window.__notReloaded") is True
    assert int(overview.locator("#live").get_attribute("data-refreshed") or 0) > 0
    overview.reload()  # the rest of the page (attention, donut, groups) is read when it loads
    expect(overview.locator('#attention tr[data-kind="quarantined"]')).to_have_count(1)
    expect(overview.locator("#compliance circle.arc")).to_have_count(3)
    IMAGES.mkdir(parents=True, exist_ok=True)
    overview.screenshot(path=str(IMAGES / "console-overview.png"), full_page=True)


def test_history_and_detail_show_what_the_rest_api_answers(site: Site, browser_page: Any) -> None:
    from playwright.sync_api import expect

    server = "VA1OSDPATCH02"
    with site.rest() as rest:
        summary = rest.get(f"/rest/servers/osd/server/{server}/patch").json()
        assert summary, "the group action of the test before patched it"
        detail = rest.get(f"/rest/servers/osd/server/{server}/patch/{summary[0]['execution_id']}").json()
    log_in(browser_page, target=f"/console/servers/{server}")
    ids = browser_page.locator("#history tr[data-execution]").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-execution'))")
    assert ids == [e["execution_id"] for e in summary]
    first = browser_page.locator(f'#history tr[data-execution="{summary[0]["execution_id"]}"]')
    assert first.locator(".init").count() == len(summary[0]["init_messages"])
    browser_page.screenshot(path=str(IMAGES / "console-history.png"), full_page=True)
    with browser_page.expect_navigation():
        first.locator("a").first.click()
    expect(browser_page.locator("#begin-message")).to_contain_text(detail["begin_message"])
    expect(browser_page.locator("#end-message")).to_contain_text(detail["end_message"])
    expect(browser_page.locator("#duration")).to_have_text(detail["duration"])
    shown = browser_page.locator("#patches tr[data-kb]").evaluate_all(
        "rows => rows.map(r => [r.getAttribute('data-kb'), r.getAttribute('data-cycle'),"
        " r.querySelector('.hresult code').textContent])")
    assert shown == [[p["kb"], str(p["cycle"]), p["hresult"]] for p in detail["patches"]]
    failed = next(p for p in detail["patches"] if p["status"] == "failed")
    row = browser_page.locator(f'#patches tr[data-kb="{failed["kb"]}"]').first
    assert row.locator("a").get_attribute("href") == f"https://support.microsoft.com/help/{failed['kb'][2:]}"
    expect(row.locator(".hresult")).to_contain_text("ERROR_INSTALL_FAILURE")
    assert browser_page.locator("#timeline rect.step").count() >= 3
    browser_page.screenshot(path=str(IMAGES / "console-detail.png"), full_page=True)


def test_cancel_a_run(site: Site, browser_page: Any) -> None:
    from playwright.sync_api import expect

    log_in(browser_page, target="/console/actions?server=VA1OSDPATCH01")
    with browser_page.expect_navigation():
        browser_page.click("#execute")
    with browser_page.expect_navigation():
        browser_page.locator("#answers a").first.click()
    browser_page.fill("#reason", "change freeze")
    browser_page.once("dialog", lambda dialog: dialog.accept())
    with browser_page.expect_navigation():
        browser_page.click("#cancel")
    expect(browser_page.locator("#cancelled")).to_have_text("cancel requested by jane: change freeze")
    execution_id = browser_page.url.rsplit("/", 1)[1]
    with site.rest() as rest:
        url = f"/rest/servers/osd/server/VA1OSDPATCH01/patch/{execution_id}"

        def ended() -> bool:
            return rest.get(url).json()["status"] != "pending"

        _wait(ended)
        assert rest.get(url).json()["status"] == "cancelled"
    browser_page.reload()
    expect(browser_page.locator("#status")).to_contain_text("cancelled")
    assert browser_page.locator("#cancel").count() == 0


def test_another_accounts_pages_are_404(site: Site, browser_page: Any) -> None:
    with site.rest() as rest:
        execution_id = rest.get("/rest/servers/osd/server/VA1OSDPATCH03/patch").json()[0]["execution_id"]
    log_in(browser_page, "xavier")
    for path in ["/console/servers/VA1OSDPATCH03", f"/console/servers/VA1OSDPATCH03/executions/{execution_id}",
                 "/console/compliance?group=va1-0001", "/console/rollouts/1"]:
        answer = browser_page.goto(path)
        assert answer.status == 404, path
        assert browser_page.locator("h1").inner_text() == "404 · Not found"
    assert "VA1OSDPATCH" not in browser_page.goto("/console/overview").text()


def test_a_form_without_its_csrf_token_is_refused(site: Site, browser_page: Any) -> None:
    log_in(browser_page, target="/console/actions?group=va1-0009")
    browser_page.evaluate("document.querySelector('#action-form input[name=csrf_token]').remove()")
    with browser_page.expect_navigation() as navigation:
        browser_page.click("#execute")
    assert navigation.value.status == 403
    assert "CSRF" in browser_page.locator("#message").inner_text()
    with site.rest() as rest:  # nothing was queued: the server of va1-0009 has only the cancelled run
        assert len(rest.get("/rest/servers/osd/server/VA1OSDPATCH01/patch").json()) == 1


def _wait(condition: Any, timeout: float = WAIT_MS / 1000) -> None:
    from tests.e2e.harness import wait_until

    wait_until(condition, timeout=timeout, interval=0.2)
