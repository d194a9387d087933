"""Who may call the REST API: accounts' users (CLC roles, argon2 password hashes) and their bearer tokens.

A token is random (256 bits), shown once at login and stored only as its SHA-256 digest, with an expiry
(`Settings.token_ttl_seconds`, 14 days by default, as CLC's). Checking a token is one query.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import naming
from orchestrator.engine import event_log
from orchestrator.persistence import models
from orchestrator.services.errors import Conflict, NotFound, ServiceError

log = logging.getLogger(__name__)

CLC_BAD_LOGIN = "We didn't recognize the username or password you entered. Please try again."

ROLES: frozenset[str] = frozenset(
    {
        "AccountAdmin",
        "AccountViewer",
        "BillingManager",
        "DNSManager",
        "NetworkManager",
        "SecurityManager",
        "ServerAdmin",
        "ServerOperator",
    }
)
"""The CLC v2 user roles."""

OPERATOR_ROLES: frozenset[str] = frozenset({"AccountAdmin", "ServerAdmin", "ServerOperator"})
"""Roles allowed to execute packages and cancel executions; every role may read."""

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class Unauthorized(ServiceError):
    """No token, an unknown one or an expired one."""

    status = 401


class Forbidden(ServiceError):
    """A valid token whose roles do not allow the request."""

    status = 403


class BadCredentials(ServiceError):
    """Login refused: CLC's own message and status, whatever was wrong (no hint which)."""

    status = 400

    def __init__(self) -> None:
        super().__init__(CLC_BAD_LOGIN)


class TooManyFailures(ServiceError):
    """Login refused without checking the password: too many consecutive failures for this user (429)."""

    status = 429

    def __init__(self, username: str, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(f"too many failed logins for {username}: try again in {self.retry_after} s")


# Login throttling per user: after FREE_FAILURES consecutive failures, each further failure locks the user's
# logins for twice as long as the last (2 s, 4 s, … up to MAX_LOCK); a success resets it. Per user, not per
# client address, so it holds across API processes (it is in the database) and behind proxies; the price is
# that a guesser can make a real user wait up to MAX_LOCK, never lock them out for good.
FREE_FAILURES = 5
MAX_LOCK = timedelta(minutes=15)


def lock_after(failures: int) -> timedelta | None:
    """How long logins are refused after `failures` consecutive failures (None: not at all)."""
    if failures < FREE_FAILURES:
        return None
    return min(MAX_LOCK, timedelta(seconds=2 ** min(failures - FREE_FAILURES + 1, 20)))


@dataclass(frozen=True)
class Principal:
    """The caller behind a valid token."""

    username: str
    account_alias: str
    location: str
    roles: tuple[str, ...]

    @property
    def may_operate(self) -> bool:
        """Whether the caller may execute packages and cancel executions."""
        return not OPERATOR_ROLES.isdisjoint(self.roles)


@dataclass(frozen=True)
class Login:
    """A successful login: who, and the bearer token (the only time it is seen in clear)."""

    principal: Principal
    token: str
    expires_at: datetime


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the database keeps of a token: its SHA-256, hex (a leaked table grants nothing)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_username(username: str) -> str:
    """A username: 1–100 letters, digits and `._@+-`, starting with a letter or digit; case-insensitive."""
    if not USERNAME_RE.match(username) or username.endswith("\n"):
        raise ServiceError(
            f"username {username!r} must be 1 to 100 letters, digits or . _ @ + -, starting with a letter or digit"
        )
    return username.lower()


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """At least one CLC role; unknown roles are refused with the list of known ones."""
    wanted = tuple(dict.fromkeys(roles))
    unknown = [r for r in wanted if r not in ROLES]
    if unknown:
        raise ServiceError(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(ROLES))}")
    if not wanted:
        raise ServiceError(f"a user needs at least one role; known: {', '.join(sorted(ROLES))}")
    return wanted


def check_password(password: str) -> str:
    """A password of 8 to 1024 characters."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ServiceError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def require_operator(principal: Principal) -> None:
    """Refuse (403) a caller whose roles only allow reading."""
    if not principal.may_operate:
        raise Forbidden(
            f"user {principal.username} may not run operations: that needs one of the roles "
            f"{', '.join(sorted(OPERATOR_ROLES))}"
        )


class AuthService:
    """Accounts, their users, logins and token checks."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        token_ttl: timedelta,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.token_ttl = token_ttl
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    # --- administration (CLI) -------------------------------------------------------------------

    def create_account(self, alias: str, name: str, datacenter: str, email: str) -> str:
        """Create an account; an alias that exists already is a conflict."""
        try:
            alias = naming.check_alias(alias)
            datacenter = naming.check_datacenter(datacenter)
        except naming.NamingError as exc:
            raise ServiceError(str(exc)) from None
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise ServiceError("an account name must have 1 to 200 characters")
        if not EMAIL_RE.match(email) or len(email) > 320:
            raise ServiceError(f"{email!r} is not an email address")
        try:
            with self.sessions.begin() as session:
                if session.get(models.Account, alias) is not None:
                    raise Conflict(f"account {alias} already exists")
                session.add(
                    models.Account(alias=alias, name=name, datacenter=datacenter, email=email, created_at=self.clock())
                )
        except IntegrityError:
            raise Conflict(f"account {alias} already exists") from None
        return alias

    def create_user(self, username: str, alias: str, roles: Iterable[str], password: str) -> Principal:
        """Create a user of account `alias`; the password is kept as an argon2 hash only."""
        username = check_username(username)
        wanted = check_roles(roles)
        password_hash = self.hasher.hash(check_password(password))
        try:
            alias = naming.check_alias(alias)
        except naming.NamingError as exc:
            raise ServiceError(str(exc)) from None
        try:
            with self.sessions.begin() as session:
                account = session.get(models.Account, alias)
                if account is None:
                    raise ServiceError(f"account {alias} does not exist (create it with `patchaas account create`)")
                if session.scalar(sa.select(models.User.id).where(models.User.username == username)) is not None:
                    raise Conflict(f"user {username} already exists")
                session.add(
                    models.User(
                        username=username, account_alias=alias, roles=list(wanted), password_hash=password_hash,
                        created_at=self.clock(),
                    )
                )
                event_log.record(session, alias, "user.created", self.clock(),
                                 payload={"username": username, "roles": list(wanted)})
                location = account.datacenter
        except IntegrityError:
            raise Conflict(f"user {username} already exists") from None
        return Principal(username, alias, location, wanted)

    # --- the API -------------------------------------------------------------------------------

    def login(self, username: str, password: str) -> Login:
        """Check the password and issue a token; any failure is CLC's single 400 message, except a user
        throttled after repeated failures (429 with Retry-After, see `lock_after`)."""
        try:
            key = check_username(username)
        except ServiceError:
            key = None
        if key is None or not 1 <= len(password) <= MAX_PASSWORD:
            self._burn(password[:MAX_PASSWORD])
            raise BadCredentials()
        now = self.clock()
        with self.sessions.begin() as session:
            row = session.execute(
                sa.select(models.User, models.Account.datacenter)
                .join(models.Account, models.Account.alias == models.User.account_alias)
                .where(models.User.username == key)
                .with_for_update(of=models.User)  # concurrent failures count one by one
            ).first()
            if row is None:
                self._burn(password)
                raise BadCredentials()
            user, location = row
            if user.locked_until is not None and user.locked_until > now:
                raise TooManyFailures(user.username, (user.locked_until - now).total_seconds())
            ok = self._verify(user.password_hash, password)
            if not ok:
                user.failed_logins = (user.failed_logins or 0) + 1
                lock = lock_after(user.failed_logins)
                user.locked_until = now + lock if lock else None
                failures = user.failed_logins
            else:
                user.failed_logins, user.locked_until = 0, None
                if self.hasher.check_needs_rehash(user.password_hash):
                    user.password_hash = self.hasher.hash(password)
                session.execute(
                    sa.delete(models.Token).where(models.Token.user_id == user.id, models.Token.expires_at <= now)
                )
                token = new_token()
                expires_at = now + self.token_ttl
                session.add(
                    models.Token(token_hash=token_digest(token), user_id=user.id, created_at=now,
                                 expires_at=expires_at)
                )
                principal = Principal(user.username, user.account_alias, location, tuple(user.roles))
        if not ok:  # committed: the failure counts even though the answer is an error
            log.warning("failed login for %s (%d in a row)", key, failures)
            raise BadCredentials()
        return Login(principal, token, expires_at)

    def logout(self, token: str | None) -> None:
        """Revoke the bearer token used (Unauthorized if it is not a live token)."""
        self.authenticate(token)
        assert token is not None
        with self.sessions.begin() as session:
            session.execute(sa.delete(models.Token).where(models.Token.token_hash == token_digest(token)))

    def revoke_tokens(self, username: str) -> int:
        """Revoke every token of a user (a leaked token, a person leaving); how many there were."""
        key = check_username(username)
        with self.sessions.begin() as session:
            user = session.execute(sa.select(models.User.id, models.User.account_alias)
                                   .where(models.User.username == key)).first()
            if user is None:
                raise NotFound(f"user {key} not found")
            done = session.execute(sa.delete(models.Token).where(models.Token.user_id == user.id))
            revoked = int(done.rowcount or 0)  # type: ignore[attr-defined]
            event_log.record(session, user.account_alias, "user.tokens_revoked", self.clock(),
                             payload={"username": key, "revoked": revoked})
            return revoked

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind a bearer token, or Unauthorized (401)."""
        return self.check(token)[0]

    def check(self, token: str | None) -> tuple[Principal, datetime]:
        """`authenticate`, with the token's expiry (what `TokenCache` keeps)."""
        if not token:
            raise Unauthorized("this call needs a bearer token: Authorization: Bearer <token from the login call>")
        with self.sessions() as session:
            row = session.execute(
                sa.select(models.Token.expires_at, models.User, models.Account.datacenter)
                .join(models.User, models.User.id == models.Token.user_id)
                .join(models.Account, models.Account.alias == models.User.account_alias)
                .where(models.Token.token_hash == token_digest(token))
            ).first()
        if row is None:
            raise Unauthorized("the bearer token is not valid; log in again")
        expires_at, user, location = row
        if expires_at <= self.clock():
            raise Unauthorized("the bearer token has expired; log in again")
        return Principal(user.username, user.account_alias, location, tuple(user.roles)), expires_at

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    def _burn(self, password: str) -> None:
        """Spend the time a real check takes, so an unknown username cannot be told from a bad password."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        self._verify(self._dummy_hash, password)


class TokenCache:
    """The principals of bearer tokens checked in the last `ttl` seconds, so a client's burst of calls
    costs one token query, not one per call (the REST API's `_caller`). Keyed by the token's digest, like
    the tokens table. A cached token still expires on time (its `expires_at` is checked against the
    service clock on every hit); a change to the user (roles, deletion) is seen within `ttl`. `ttl` 0
    turns the cache off."""

    def __init__(self, auth: AuthService, ttl: float, size: int = 10_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.auth = auth
        self.ttl = ttl
        self.size = size
        self.monotonic = monotonic
        self._entries: dict[str, tuple[Principal, datetime, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str | None) -> Principal | None:
        """The principal of `token` if it was checked within `ttl` and has not expired since; else None."""
        if not token or self.ttl <= 0:
            return None
        digest = token_digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, expires_at, checked = entry
        if self.monotonic() - checked >= self.ttl or expires_at <= self.auth.clock():
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return principal

    def forget(self, token: str | None) -> None:
        """Drop a token from this process's cache (a logout: other processes see it within `ttl`)."""
        if token:
            with self._lock:
                self._entries.pop(token_digest(token), None)

    def authenticate(self, token: str | None) -> Principal:
        """`AuthService.authenticate` through the cache (a database query on a miss)."""
        hit = self.cached(token)
        if hit is not None:
            return hit
        principal, expires_at = self.auth.check(token)
        if self.ttl > 0 and token:
            with self._lock:
                if len(self._entries) >= self.size:
                    self._entries.clear()  # bounded: a flood of tokens costs queries, never memory
                self._entries[token_digest(token)] = (principal, expires_at, self.monotonic())
        return principal
