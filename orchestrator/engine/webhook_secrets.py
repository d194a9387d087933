"""Webhook signing secrets: never stored in clear, never answered after creation (docs/HOOKS.md).

A subscription keeps its secret one of two ways:
- **sealed**: the secret given at creation (or generated, `whsec_…`) is encrypted with Fernet (AES-128-CBC +
  HMAC-SHA256) under PATCHAAS_WEBHOOK_KEY, a key the API and the workers share; the database holds only the
  token. A leaked database without the key signs nothing. Rotating the key: PATCHAAS_WEBHOOK_KEY takes
  several keys separated by commas, the first seals, every one opens (MultiFernet).
- **a reference** (`secretRef`): `env:NAME` (an environment variable of the workers) or `file:/path` (a file
  on the workers, e.g. a mounted Kubernetes secret), read when a delivery is signed. Nothing secret is stored.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

REF_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^\0\n]{1,490})$")
MIN_SECRET, MAX_SECRET = 16, 200


class SecretUnavailable(Exception):
    """The secret cannot be read or sealed: no key, a wrong key, a missing variable or file."""


def generate() -> str:
    """A fresh signing secret (shown once, in the answer that creates the subscription)."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_ref(ref: str) -> str:
    """A secret reference as stored, or ValueError."""
    if not REF_RE.match(ref):
        raise ValueError("secretRef must be env:NAME (a variable of the workers) or file:/absolute/path")
    return ref


def check_secret(secret: str) -> str:
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or any(c.isspace() for c in secret):
        raise ValueError(f"a webhook secret has {MIN_SECRET} to {MAX_SECRET} characters and no spaces")
    return secret


def _fernet(keys: str | None) -> MultiFernet:
    parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
    if not parts:
        raise SecretUnavailable("no PATCHAAS_WEBHOOK_KEY is set: set one (a Fernet key, see docs/HOOKS.md) "
                                "or give the subscription a secretRef (env:NAME or file:/path)")
    try:
        return MultiFernet([Fernet(k.encode()) for k in parts])
    except ValueError:
        raise SecretUnavailable("PATCHAAS_WEBHOOK_KEY is not a Fernet key (32 url-safe base64 bytes)") from None


def seal(secret: str, keys: str | None) -> str:
    """The stored form of `secret`: a Fernet token under the first key."""
    return _fernet(keys).encrypt(secret.encode()).decode()


def unseal(token: str, keys: str | None) -> str:
    try:
        return _fernet(keys).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable("the sealed secret does not open with PATCHAAS_WEBHOOK_KEY (a key was "
                                "changed without keeping the old one after it)") from None


def resolve(sealed: str | None, ref: str | None, keys: str | None) -> str:
    """The secret a delivery signs with."""
    if sealed:
        return unseal(sealed, keys)
    if ref and ref.startswith("env:"):
        value = os.environ.get(ref[4:])
        if not value:
            raise SecretUnavailable(f"the secret reference {ref} names a variable the worker does not have")
        return value
    if ref and ref.startswith("file:"):
        try:
            return Path(ref[5:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretUnavailable(f"the secret reference {ref} cannot be read: {exc.strerror}") from None
    raise SecretUnavailable("the subscription has no secret")
