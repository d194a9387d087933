"""What an HTTP hook sends (docs/HOOKS.md): its body rendered from a Jinja2 template in a sandbox, with the
execution's fields; its headers, the secret ones opened only when the call is made.

Secret headers are kept like webhook secrets (engine/webhook_secrets.py): sealed with PATCHAAS_WEBHOOK_KEY
(`secretHeaders` given once to PUT) or named by a reference the workers read (`headersRef`: env:NAME or
file:/path, holding a JSON object of headers). Neither is ever answered nor written to a hook run's output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.domain import machine
from orchestrator.engine import webhook_secrets

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
MAX_BODY = 100_000  # bytes of a rendered body


class HookCallError(Exception):
    """The hook cannot be called as defined (a template that does not render, secret headers unavailable)."""


def check_template(text: str) -> None:
    """ValueError naming the line when `text` is not a valid template (checked when the hook is PUT)."""
    try:
        _ENV.parse(text)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise ValueError(f"the body template does not parse{f' (line {line})' if line else ''}: {exc}") from None


def context(view: machine.ExecutionView, name: str, point: str, cycle: int, key: str) -> dict[str, Any]:
    """What a body template sees: `execution` (the run) and `hook` (this call)."""
    return {
        "execution": {
            "id": view.id, "server": view.server, "account": view.account, "packageId": view.package_id,
            "state": (view.hook_resume or view.state).value, "cycle": view.cycle,
            "outcome": view.outcome.value if view.outcome else None, "failureReason": view.failure_reason,
            "installedCount": view.installed_count, "quarantined": dict(view.quarantined),
        },
        "hook": {"name": name, "point": point, "cycle": cycle, "idempotencyKey": key},
    }


def render(template: str, values: Mapping[str, Any]) -> bytes:
    """The rendered body; HookCallError when it does not render (an unknown field, a sandbox refusal)."""
    try:
        text = _ENV.from_string(template).render(**values)
    except TemplateError as exc:
        raise HookCallError(f"the body template does not render: {exc}") from None
    data = text.encode()
    if len(data) > MAX_BODY:
        raise HookCallError(f"the rendered body has {len(data)} bytes (at most {MAX_BODY})")
    return data


def seal_headers(headers: Mapping[str, str], keys: str | None) -> str:
    """The stored form of secret headers (SecretUnavailable without PATCHAAS_WEBHOOK_KEY)."""
    return webhook_secrets.seal(json.dumps(dict(headers), sort_keys=True), keys)


def secret_headers(sealed: str | None, ref: str | None, keys: str | None) -> dict[str, str]:
    """The secret headers of a hook, opened now; {} when it has none."""
    if not sealed and not ref:
        return {}
    try:
        raw = webhook_secrets.resolve(sealed, ref, keys)
    except webhook_secrets.SecretUnavailable as exc:
        raise HookCallError(f"the secret headers are unavailable: {exc}") from None
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise HookCallError(f"the secret headers{f' of {ref}' if ref else ''} are not a JSON object of strings")
    return found


def headers(definition: Mapping[str, Any], sealed: str | None, keys: str | None, key: str,
            has_body: bool) -> dict[str, str]:
    """Every header of the call: the plain ones, the secret ones (which win), the Idempotency-Key."""
    found = {"Content-Type": "application/json"} if has_body else {}
    found.update(definition.get("headers") or {})
    found.update(secret_headers(sealed, definition.get("headersRef"), keys))
    found["Idempotency-Key"] = key
    return found
