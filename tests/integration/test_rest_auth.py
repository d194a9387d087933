"""Accounts, users and tokens on real PostgreSQL (and the users-and-tokens migration on SQLite too)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from orchestrator import auth, db, migrate, models
from orchestrator.service import Conflict, ServiceError
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
