"""Operators register Linux servers' SSH details, through the REST API and the CLI, on a real PostgreSQL:
what is stored is what the ssh driver reads (key references, never keys; a pinned host-key fingerprint)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import db, models
from orchestrator.services import auth, inventory
from simulation import fleet as simulated
from simulation.store import MemoryStore
from tests import support
from workers import mail

PASSWORD = "correct horse battery"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExx/jFLVcaeXlw+GmUmg393CFKyq5lNjZPl18s4UJVu web01"
HOST_FP = "SHA256:JAvFLD7GHWMrX0xQBxjJgEQ/HrDYye5XC6Cdm8aT0LE"  # ssh-keygen -lf


@pytest.fixture
def inventory_db(pg: str) -> str:
    engine = db.create_engine_for(pg)
    with db.session_factory(engine).begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, "OSD", "OSD", "VA1", "ops@osd.example", now)
        inventory.ensure_account(session, "XYZ", "XYZ", "VA1", "ops@xyz.example", now)
        inventory.ensure_group(session, "OSD", "va1-0001", "root")
        inventory.ensure_group(session, "XYZ", "va1-0100", "xyz")
        inventory.register_servers(session, "OSD", [
            inventory.ServerSpec("VA1OSDDEB01", "Debian 12 64-bit", "started", "va1-0001"),
            inventory.ServerSpec("VA1OSDRPM01", "RedHat Enterprise Linux 9 64-bit", "started", "va1-0001"),
            inventory.ServerSpec("VA1OSDWIN01", "Windows 2012R2 Datacenter 64-bit", "started", "va1-0001"),
        ])
        inventory.register_servers(session, "XYZ", [
            inventory.ServerSpec("VA1XYZDEB01", "Debian 12 64-bit", "started", "va1-0100"),
        ])
    engine.dispose()
    return pg


@pytest.fixture
def client(inventory_db: str) -> Iterator[TestClient]:
    clock = support.FakeClock()
    fleet = simulated.SimulatedFleet.create([], MemoryStore(), simulated.SimTimings.instant(), seed=1,
                                            clock=clock.seconds)
    container = support.make_container(support.test_settings(inventory_db), fleet, clock,
                                       support.ListDispatcher(), mail.MemoryMailer())
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = auth.AuthService(container.sessions, clock, timedelta(days=14), hasher=cheap)
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    accounts.create_user("viewer", "OSD", ["AccountViewer"], PASSWORD)
    with TestClient(create_app(container, auth_service=accounts)) as test_client:
        yield test_client
    container.close()


def login(client: TestClient, username: str = "jane") -> dict[str, str]:
    answer = client.post("/v2/authentication/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['bearerToken']}"}


def rows(url: str) -> dict[str, models.SshHost]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {r.server_name: r for r in conn.execute(sa.select(models.SshHost)).all()}
    engine.dispose()
    return found  # type: ignore[return-value]


BODY = {"host": "10.0.4.21", "port": 2222, "username": "patchaas", "keyRef": "web.key", "packageManager": "apt"}


def test_an_operator_registers_lists_replaces_and_removes_an_ssh_host(client: TestClient, inventory_db: str) -> None:
    headers = login(client)
    url = "/v2/patchaas/OSD/ssh-hosts/VA1OSDDEB01"
    created = client.put(url, json={**BODY, "hostKey": HOST_KEY}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["hostKeyFingerprint"] == HOST_FP and created.json()["keyRef"] == "web.key"
    row = rows(inventory_db)["VA1OSDDEB01"]
    assert (row.host, row.port, row.username, row.key_ref, row.package_manager, row.host_key_fingerprint) == (
        "10.0.4.21", 2222, "patchaas", "web.key", "apt", HOST_FP)
    replaced = client.put(url, json={**BODY, "keyRef": "agent:" + HOST_FP}, headers=headers)
    assert replaced.status_code == 200 and replaced.json()["hostKeyFingerprint"] is None
    listed = client.get("/v2/patchaas/OSD/ssh-hosts", headers=login(client, "viewer"))
    assert [h["server"] for h in listed.json()] == ["VA1OSDDEB01"] and listed.json()[0]["keyRef"].startswith("agent:")
    assert client.get(url, headers=headers).json()["port"] == 2222
    removed = client.delete(url, headers=headers)
    assert removed.status_code == 200 and "VA1OSDDEB01" not in rows(inventory_db)
    assert client.get(url, headers=headers).status_code == 404


@pytest.mark.parametrize("change,status,words", [
    ({"keyRef": PRIVATE_KEY}, 400, "never contain one"),
    ({"keyRef": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"}, 400, "never contain one"),
    ({"keyRef": "../../etc/shadow"}, 400, "'..'"),
    ({"keyRef": "agent:md5:aa:bb"}, 400, "agent:SHA256"),
    ({"keyRef": "key with spaces"}, 400, "absolute path"),
    ({"hostKey": PRIVATE_KEY}, 400, "never a private key"),
    ({"hostKey": "not a key"}, 400, "host_key must be"),
    ({"packageManager": "zypper"}, 400, "packageManager"),
    ({"host": "-oProxyCommand=x"}, 400, "DNS name"),
    ({"port": 0}, 400, "port"),
    ({"password": "x"}, 400, "password"),
])
def test_bad_input_is_a_400_with_a_message_and_a_pasted_key_is_never_stored_or_echoed(
    client: TestClient, inventory_db: str, change: dict[str, object], status: int, words: str
) -> None:
    answer = client.put("/v2/patchaas/OSD/ssh-hosts/VA1OSDDEB01", json={**BODY, **change}, headers=login(client))
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"], answer.json()
    assert "PRIVATE KEY" not in answer.text and "b3BlbnNzaC1rZXkt" not in answer.text
    assert rows(inventory_db) == {}


def test_unknown_other_accounts_and_windows_servers_are_refused(client: TestClient, inventory_db: str) -> None:
    headers = login(client)
    unknown = client.put("/v2/patchaas/OSD/ssh-hosts/VA1OSDNOPE01", json=BODY, headers=headers)
    assert unknown.status_code == 404 and "VA1OSDNOPE01 not found" in unknown.json()["message"]
    theirs = client.put("/v2/patchaas/OSD/ssh-hosts/VA1XYZDEB01", json=BODY, headers=headers)
    assert theirs.status_code == 404  # another account's server answers as a missing one
    other_alias = client.get("/v2/patchaas/XYZ/ssh-hosts", headers=headers)
    assert other_alias.status_code == 404
    windows = client.put("/v2/patchaas/OSD/ssh-hosts/VA1OSDWIN01", json=BODY, headers=headers)
    assert windows.status_code == 400 and "not Linux" in windows.json()["message"]
    assert rows(inventory_db) == {}


def test_reading_needs_a_token_and_writing_needs_an_operator(client: TestClient) -> None:
    url = "/v2/patchaas/OSD/ssh-hosts/VA1OSDRPM01"
    assert client.get("/v2/patchaas/OSD/ssh-hosts").status_code == 401
    assert client.put(url, json=BODY).status_code == 401
    assert client.put(url, json=BODY, headers=login(client, "viewer")).status_code == 403
    assert client.delete(url, headers=login(client, "viewer")).status_code == 403


def test_a_host_in_maintenance_cannot_be_removed(client: TestClient, inventory_db: str) -> None:
    headers = login(client)
    url = "/v2/patchaas/OSD/ssh-hosts/VA1OSDRPM01"
    assert client.put(url, json={**BODY, "packageManager": "dnf"}, headers=headers).status_code == 201
    engine = sa.create_engine(inventory_db)
    with engine.begin() as conn:
        conn.execute(sa.update(models.SshHost).values(in_maintenance=True))
    engine.dispose()
    answer = client.delete(url, headers=headers)
    assert answer.status_code == 409 and "maintenance" in answer.json()["message"]
    assert "VA1OSDRPM01" in rows(inventory_db)


# --- the CLI ----------------------------------------------------------------------------------------


def cli(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args), env={"PATCHAAS_DATABASE_URL": url, "COLUMNS": "200"})
    return result.exit_code, result.output


def test_the_cli_adds_lists_shows_and_removes_ssh_hosts(inventory_db: str, tmp_path: Path) -> None:
    code, out = cli(inventory_db, "ssh-host", "add", "va1osdrpm01", "--alias", "OSD", "--host", "10.0.4.22",
                    "--key", "/etc/patchaas/keys/rpm.key", "--pm", "dnf", "--port", "2200",
                    "--host-key", f"[10.0.4.22]:2200 {HOST_KEY}")
    assert code == 0, out
    assert "registered VA1OSDRPM01: root@10.0.4.22:2200 (dnf)" in out and HOST_FP in out
    row = rows(inventory_db)["VA1OSDRPM01"]
    assert (row.key_ref, row.package_manager, row.host_key_fingerprint) == ("/etc/patchaas/keys/rpm.key", "dnf",
                                                                           HOST_FP)
    code, out = cli(inventory_db, "ssh-host", "list", "--alias", "OSD")
    assert code == 0 and "VA1OSDRPM01" in out and "10.0.4.22:2200" in out, out
    code, out = cli(inventory_db, "ssh-host", "show", "VA1OSDRPM01", "--alias", "OSD")
    assert code == 0 and "/etc/patchaas/keys/rpm.key" in out, out
    code, out = cli(inventory_db, "ssh-host", "remove", "VA1OSDRPM01", "--alias", "OSD")
    assert code == 0 and "removed" in out and rows(inventory_db) == {}


@pytest.mark.parametrize("args,code,words", [
    (["--key", PRIVATE_KEY], 2, "never contain one"),
    (["--key", "../x"], 2, "'..'"),
    (["--pm", "zypper"], 2, "package_manager"),
    (["--host-key", "SHA256:short"], 2, "host_key must be"),
])
def test_the_cli_refuses_bad_input_with_exit_code_2(inventory_db: str, args: list[str], code: int,
                                                     words: str) -> None:
    base = {"--alias": "OSD", "--host": "10.0.4.21", "--key": "web.key", "--pm": "apt"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    exit_code, out = cli(inventory_db, "ssh-host", "add", "VA1OSDDEB01", *[x for kv in base.items() for x in kv])
    assert exit_code == code and words in out, out
    assert "PRIVATE KEY" not in out and rows(inventory_db) == {}


def test_the_cli_refuses_unknown_and_windows_servers(inventory_db: str) -> None:
    common = ["--alias", "OSD", "--host", "10.0.4.21", "--key", "web.key", "--pm", "apt"]
    code, out = cli(inventory_db, "ssh-host", "add", "VA1OSDNOPE01", *common)
    assert code == 1 and "not found" in out, out
    code, out = cli(inventory_db, "ssh-host", "add", "VA1OSDWIN01", *common)
    assert code == 2 and "not Linux" in out, out
    code, out = cli(inventory_db, "ssh-host", "remove", "VA1OSDDEB01", "--alias", "OSD")
    assert code == 1 and "no SSH host registered" in out, out
