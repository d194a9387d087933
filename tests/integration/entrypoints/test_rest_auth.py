"""Accounts, users and tokens on real PostgreSQL (and the users-and-tokens migration on SQLite too)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from orchestrator.persistence import db, migrate, models
from orchestrator.services import auth
from orchestrator.services.errors import Conflict, ServiceError
from tests import support

PASSWORD = "correct horse battery"


def cheap(time_cost: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1)


@pytest.fixture
def accounts(pg: str) -> Iterator[tuple[auth.AuthService, support.FakeClock]]:
    clock = support.FakeClock()
    engine = db.create_engine_for(pg)
    service = auth.AuthService(db.session_factory(engine), clock, timedelta(days=14), hasher=cheap())
    service.create_account("OSD", "OSD Inc", "va1", "ops@osd.example")
    yield service, clock
    engine.dispose()


def rows(service: auth.AuthService, model: type[models.Base]) -> list[object]:
    with service.sessions() as session:
        return list(session.scalars(sa.select(model)))


def test_a_token_is_stored_only_as_its_digest(accounts: tuple[auth.AuthService, support.FakeClock]) -> None:
    service, clock = accounts
    service.create_user("jane", "osd", ["ServerAdmin"], PASSWORD)
    done = service.login("jane", PASSWORD)
    [token] = rows(service, models.Token)
    assert isinstance(token, models.Token)
    assert token.token_hash == auth.token_digest(done.token) != done.token
    assert token.expires_at == clock.now + timedelta(days=14) == done.expires_at
    assert service.authenticate(done.token) == auth.Principal("jane", "OSD", "VA1", ("ServerAdmin",))


def test_the_password_is_kept_as_an_argon2_hash(accounts: tuple[auth.AuthService, support.FakeClock]) -> None:
    service, _ = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    [user] = rows(service, models.User)
    assert isinstance(user, models.User)
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash


def test_a_login_drops_the_users_expired_tokens(accounts: tuple[auth.AuthService, support.FakeClock]) -> None:
    service, clock = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    old = service.login("jane", PASSWORD).token
    clock.advance(timedelta(days=15).total_seconds())
    with pytest.raises(auth.Unauthorized, match="expired"):
        service.authenticate(old)
    service.login("jane", PASSWORD)
    assert len(rows(service, models.Token)) == 1


def test_a_hash_made_with_older_parameters_is_upgraded_at_login(
    accounts: tuple[auth.AuthService, support.FakeClock]
) -> None:
    service, clock = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    stronger = auth.AuthService(service.sessions, clock, timedelta(days=14), hasher=cheap(time_cost=2))
    stronger.login("jane", PASSWORD)
    [user] = rows(service, models.User)
    assert isinstance(user, models.User) and "t=2" in user.password_hash
    assert service.login("jane", PASSWORD).principal.username == "jane"


def test_unknown_users_and_wrong_passwords_are_one_refusal(
    accounts: tuple[auth.AuthService, support.FakeClock]
) -> None:
    service, _ = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    for username, password in [("jane", "wrong password"), ("nobody", PASSWORD), ("jane", "\ud800" * 9)]:
        with pytest.raises(auth.BadCredentials) as refused:
            service.login(username, password)
        assert refused.value.message == auth.CLC_BAD_LOGIN
    assert rows(service, models.Token) == []


def test_accounts_and_users_are_created_once(accounts: tuple[auth.AuthService, support.FakeClock]) -> None:
    service, _ = accounts
    with pytest.raises(Conflict):
        service.create_account("osd", "again", "VA1", "ops@osd.example")
    service.create_user("Jane", "OSD", ["ServerAdmin"], PASSWORD)
    with pytest.raises(Conflict):
        service.create_user("JANE", "OSD", ["AccountViewer"], PASSWORD)
    with pytest.raises(ServiceError, match="does not exist"):
        service.create_user("bob", "XYZ", ["ServerAdmin"], PASSWORD)


def test_the_users_and_tokens_migration_goes_up_and_down_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "0001")
    engine = sa.create_engine(url)
    assert not sa.inspect(engine).has_table("users")
    migrate.upgrade(url)
    assert {"users", "tokens"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_repeated_failures_throttle_the_user_and_a_success_resets(
    accounts: tuple[auth.AuthService, support.FakeClock]
) -> None:
    service, clock = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    for _ in range(auth.FREE_FAILURES - 1):
        with pytest.raises(auth.BadCredentials):
            service.login("jane", "wrong password")
    service.login("jane", PASSWORD)  # a success before the limit resets the count
    for _ in range(auth.FREE_FAILURES):
        with pytest.raises(auth.BadCredentials):
            service.login("JANE", "wrong password")
    # locked for 2 s: even the right password is refused, without being checked, with how long to wait
    with pytest.raises(auth.TooManyFailures, match="too many failed logins for jane: try again in 2 s") as refused:
        service.login("jane", PASSWORD)
    assert refused.value.status == 429 and refused.value.retry_after == 2
    clock.advance(2)
    with pytest.raises(auth.BadCredentials):  # one more failure: locked twice as long
        service.login("jane", "still wrong")
    with pytest.raises(auth.TooManyFailures, match="try again in 4 s"):
        service.login("jane", PASSWORD)
    clock.advance(4)
    service.login("jane", PASSWORD)
    [user] = rows(service, models.User)
    assert isinstance(user, models.User) and user.failed_logins == 0 and user.locked_until is None
    assert [auth.lock_after(n) for n in (4, 5, 6, 7)] == [None, timedelta(seconds=2), timedelta(seconds=4),
                                                          timedelta(seconds=8)]
    assert auth.lock_after(100) == auth.MAX_LOCK


def test_logout_and_revocation_end_tokens(accounts: tuple[auth.AuthService, support.FakeClock]) -> None:
    service, _ = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    first, second, third = (service.login("jane", PASSWORD).token for _ in range(3))
    service.logout(first)
    with pytest.raises(auth.Unauthorized):
        service.authenticate(first)
    with pytest.raises(auth.Unauthorized):
        service.logout(first)  # not a live token any more
    assert service.authenticate(second).username == "jane"
    assert service.revoke_tokens("Jane") == 2
    for token in (second, third):
        with pytest.raises(auth.Unauthorized):
            service.authenticate(token)
    with pytest.raises(ServiceError, match="user nobody not found"):
        service.revoke_tokens("nobody")


def test_rest_logout_and_throttled_login(pg: str) -> None:
    from fastapi.testclient import TestClient

    from orchestrator import bootstrap
    from orchestrator.entrypoints.rest import create_app

    clock = support.FakeClock()
    container = bootstrap.build(support.test_settings(pg), dispatcher=support.ListDispatcher(), clock=clock)
    service = auth.AuthService(container.sessions, clock, timedelta(days=14), hasher=cheap())
    service.create_account("OSD", "OSD Inc", "va1", "ops@osd.example")
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    try:
        with TestClient(create_app(container, auth_service=service)) as client:
            def login(password: str):  # type: ignore[no-untyped-def]
                return client.post("/v2/authentication/login", json={"username": "jane", "password": password})

            token = login(PASSWORD).json()["bearerToken"]
            headers = {"Authorization": f"Bearer {token}"}
            assert client.get("/v2/groups/osd/va1-0001", headers=headers).status_code == 404  # a live token
            assert client.post("/v2/authentication/logout", headers=headers).status_code == 204
            gone = client.get("/v2/groups/osd/va1-0001", headers=headers)  # the cache forgot it at once
            assert gone.status_code == 401 and "message" in gone.json()
            assert client.post("/v2/authentication/logout").status_code == 401
            for _ in range(auth.FREE_FAILURES):
                assert login("wrong password").status_code == 400
            throttled = login(PASSWORD)
            assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
            assert throttled.json() == {"message": "too many failed logins for jane: try again in 2 s"}
            clock.advance(2)
            assert login(PASSWORD).status_code == 200
    finally:
        container.close()


def test_cli_user_revoke_tokens(accounts: tuple[auth.AuthService, support.FakeClock], pg: str) -> None:
    from typer.testing import CliRunner

    from orchestrator.entrypoints.cli.main import app as cli_app

    service, _ = accounts
    service.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    token = service.login("jane", PASSWORD).token
    runner = CliRunner()
    done = runner.invoke(cli_app, ["user", "revoke-tokens", "jane"], env={"PATCHAAS_DATABASE_URL": pg})
    assert done.exit_code == 0 and "1 token of jane revoked" in done.output, done.output
    with pytest.raises(auth.Unauthorized):
        service.authenticate(token)
    missing = runner.invoke(cli_app, ["user", "revoke-tokens", "nobody"], env={"PATCHAAS_DATABASE_URL": pg})
    assert missing.exit_code == 2 and "user nobody not found" in missing.output
