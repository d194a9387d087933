"""An HTTP hook's request (engine/hook_calls.py): the sandboxed body template, its checks, and the secret headers
opened at call time from a sealed value or a reference."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from orchestrator.domain.execution import ExecutionView, Outcome, State
from orchestrator.engine import hook_calls

KEY = Fernet.generate_key().decode()
VIEW = ExecutionView(id="VA1-123456", server="VA1OSDWEB01", state=State.RUNNING_HOOKS, cycle=2, account="OSD",
                     outcome=Outcome.COMPLETED, installed_count=3, hook_resume=State.COMPLETED)


def context() -> dict[str, object]:
    return hook_calls.context(VIEW, "notify", "post_run", 2, "VA1-123456:hook:post_run:2:notify")


def test_the_body_is_rendered_with_the_executions_fields() -> None:
    body = hook_calls.render('{"run": {{ execution | tojson }}, "key": "{{ hook.idempotencyKey }}"}', context())
    sent = json.loads(body)
    assert sent["run"]["id"] == "VA1-123456" and sent["run"]["state"] == "completed"
    assert sent["run"]["installedCount"] == 3 and sent["key"] == "VA1-123456:hook:post_run:2:notify"


def test_an_unknown_field_fails_the_hook_instead_of_sending_an_empty_value() -> None:
    with pytest.raises(hook_calls.HookCallError, match="does not render"):
        hook_calls.render("{{ execution.nope }}", context())


def test_the_sandbox_refuses_reaching_into_python() -> None:
    with pytest.raises(hook_calls.HookCallError, match="does not render"):
        hook_calls.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", context())


def test_a_template_that_does_not_parse_is_refused_when_the_hook_is_put() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        hook_calls.check_template("{% if %}")
    hook_calls.check_template("{{ execution.server }}")


def test_sealed_secret_headers_open_only_with_the_key() -> None:
    sealed = hook_calls.seal_headers({"Authorization": "Bearer t0ken"}, KEY)
    assert "t0ken" not in sealed
    assert hook_calls.secret_headers(sealed, None, KEY) == {"Authorization": "Bearer t0ken"}
    with pytest.raises(hook_calls.HookCallError, match="unavailable"):
        hook_calls.secret_headers(sealed, None, Fernet.generate_key().decode())


def test_a_headers_reference_is_read_when_the_call_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_HEADERS", '{"X-Api-Key": "k1"}')
    assert hook_calls.headers({"headersRef": "env:HOOK_HEADERS", "headers": {"X-Team": "ops"}}, None, None,
                              "key-1", has_body=True) == {"Content-Type": "application/json", "X-Team": "ops",
                                                          "X-Api-Key": "k1", "Idempotency-Key": "key-1"}
    monkeypatch.setenv("HOOK_HEADERS", "not json")
    with pytest.raises(hook_calls.HookCallError, match="not a JSON object"):
        hook_calls.secret_headers(None, "env:HOOK_HEADERS", None)
    monkeypatch.delenv("HOOK_HEADERS")
    with pytest.raises(hook_calls.HookCallError, match="names a variable the worker does not have"):
        hook_calls.secret_headers(None, "env:HOOK_HEADERS", None)


def test_a_hook_without_secret_headers_has_none() -> None:
    assert hook_calls.secret_headers(None, None, None) == {}
    assert hook_calls.headers({}, None, None, "k", has_body=False) == {"Idempotency-Key": "k"}
