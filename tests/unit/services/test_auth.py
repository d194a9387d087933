"""The pure parts of authentication: token digests, username/role/password rules, who may operate."""

from __future__ import annotations

import hashlib

import pytest

from orchestrator.services import auth
from orchestrator.services.errors import ServiceError


def test_a_token_is_stored_as_its_sha256_hex_digest() -> None:
    assert auth.token_digest("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(auth.token_digest(auth.new_token())) == 64


def test_tokens_are_long_random_and_url_safe() -> None:
    tokens = {auth.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_usernames_are_case_insensitive() -> None:
    assert auth.check_username("Jane.Doe@example.com") == "jane.doe@example.com"


@pytest.mark.parametrize("username", ["", " jane", "jane doe", "jane\n", "-jane", "a" * 101, "ja\x00ne", "jané"])
def test_odd_usernames_are_refused(username: str) -> None:
    with pytest.raises(ServiceError):
        auth.check_username(username)


def test_roles_must_be_clc_roles_and_at_least_one() -> None:
    assert auth.check_roles(["ServerAdmin", "ServerAdmin", "AccountViewer"]) == ("ServerAdmin", "AccountViewer")
    with pytest.raises(ServiceError, match="known: AccountAdmin"):
        auth.check_roles(["Boss"])
    with pytest.raises(ServiceError, match="at least one role"):
        auth.check_roles([])


@pytest.mark.parametrize("password", ["short", "x" * (auth.MAX_PASSWORD + 1)])
def test_passwords_have_a_length_range(password: str) -> None:
    with pytest.raises(ServiceError):
        auth.check_password(password)


@pytest.mark.parametrize("roles,may", [(("ServerAdmin",), True), (("AccountAdmin",), True),
                                       (("ServerOperator",), True), (("AccountViewer", "BillingManager"), False)])
def test_only_admin_and_operator_roles_may_operate(roles: tuple[str, ...], may: bool) -> None:
    caller = auth.Principal("jane", "OSD", "VA1", roles)
    assert caller.may_operate is may


def test_a_reader_is_forbidden_to_operate_with_a_403() -> None:
    with pytest.raises(auth.Forbidden) as refused:
        auth.require_operator(auth.Principal("jane", "OSD", "VA1", ("AccountViewer",)))
    assert refused.value.status == 403 and "ServerAdmin" in refused.value.message


def test_bad_credentials_carry_the_clc_message_and_400() -> None:
    refused = auth.BadCredentials()
    assert refused.status == 400
    assert refused.message == "We didn't recognize the username or password you entered. Please try again."


def test_unauthorized_is_401() -> None:
    assert auth.Unauthorized("x").status == 401
