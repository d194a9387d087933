"""The console's session and CSRF tokens (pure: no I/O).

A console session *is* a bearer token of `orchestrator/services/auth.py`: logging in with the form calls
`AuthService.login` (same users, same throttling, same argon2 check) and the token it mints goes into the
session cookie, HttpOnly and SameSite=Strict (Secure when the page was asked for over https). The server
keeps only its SHA-256, with its expiry, in the `tokens` table, so the cookie is an opaque server-side session
id: nothing in it can be altered to mean anything else, logging out revokes it at once, `patchaas user
revoke-tokens` ends it within the token cache's seconds, and every API process accepts it (no secret to share).

CSRF: every form of a logged-in page carries `csrf_token(session)`, an HMAC-SHA256 keyed by the session token,
so it is bound to that session and can only be computed by someone who holds the cookie (which scripts cannot
read). The login form, before there is a session, uses a double-submit token: a random value in a
SameSite=Strict HttpOnly cookie that the form must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

SESSION_COOKIE = "patchaas_session"
LOGIN_COOKIE = "patchaas_login_csrf"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/console"
SESSION_TTL = timedelta(hours=12)  # a console login; API tokens live PATCHAAS_TOKEN_TTL_SECONDS
_PURPOSE = b"patchaas console csrf v1"


def csrf_token(session_token: str) -> str:
    """The CSRF token of the forms of one session."""
    return hmac.new(session_token.encode("utf-8", "surrogatepass"), _PURPOSE, hashlib.sha256).hexdigest()


def csrf_ok(session_token: str | None, submitted: str | None) -> bool:
    """Whether a submitted form's token is its session's (constant-time)."""
    if not session_token or not submitted:
        return False
    return hmac.compare_digest(csrf_token(session_token), submitted)


def new_login_token() -> str:
    """The double-submit token of a login form."""
    return secrets.token_urlsafe(24)


def login_csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie, submitted)


def cookie_options(https: bool, max_age: timedelta | None = None) -> dict[str, object]:
    """The attributes every console cookie is set with."""
    options: dict[str, object] = {"httponly": True, "samesite": "strict", "secure": https, "path": COOKIE_PATH}
    if max_age is not None:
        options["max_age"] = int(max_age.total_seconds())
    return options


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a console path of this site (no open redirect)."""
    if target and target.startswith(COOKIE_PATH + "/") and not target.startswith("//") and "\\" not in target \
            and "//" not in target:
        return target
    return COOKIE_PATH + "/"
