"""Log lines: JSON or console, the current step's context on every line (whoever writes it), and every
secret patchaas holds masked however it is written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from orchestrator.domain import machine
from orchestrator.observability import context, logs

KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
       "-----END OPENSSH PRIVATE KEY-----")
TOKEN = "q0Z7w3b5aB8HkP1XvN4mR2sT6yU9cD0eF3gJ5kL7nQ"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logs.handler("json", stream)
    logger = logging.getLogger("tests.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("text, secret", [
    (f"Authorization: Bearer {TOKEN}", TOKEN),
    (f"GET /v2/servers/osd/x?access_token={TOKEN} HTTP/1.1", TOKEN),
    ('{"username": "jane", "password": "hunter2-is-long"}', "hunter2-is-long"),
    ("login with password=hunter2-is-long failed", "hunter2-is-long"),
    (f"PackageRun(cycle=1, report_token='{TOKEN}')", TOKEN),
    (f'{{"patchaas.reportToken": "{TOKEN}"}}', TOKEN),
    (f'{{"bearerToken": "{TOKEN}", "accountAlias": "OSD"}}', TOKEN),
    ("connecting to postgresql+psycopg2://patchaas:s3cret-pw@db:5432/patchaas", "s3cret-pw"),
    ("clc_password=SecretStr('**********') clc_username=patchaas", "SecretStr('*"),
    (f"could not load the key:\n{KEY}\n", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
])
def test_secrets_are_masked(text: str, secret: str) -> None:
    masked = logs.redact(text)
    assert secret not in masked or secret.startswith("SecretStr"), masked
    assert logs.MASK in masked


def test_ordinary_words_are_left_alone() -> None:
    for text in ("token expired for jane; logging in again", "3 tokens revoked", "basic patch summary",
                 "execution VA1-123456: RebootServer: 503 Service Unavailable (attempt 2)"):
        assert logs.redact(text) == text


def test_a_registered_secret_is_masked_wherever_it_appears() -> None:
    logs.register_secret("a-configured-clc-password")
    assert logs.redact("CLC said: bad password a-configured-clc-password") == "CLC said: bad password ***"
    logs.register_secret("abc")  # too short to mask safely
    assert logs.redact("abc") == "abc"


def test_a_json_line_carries_the_steps_context_and_extra_fields(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    view = machine.ExecutionView(id="VA1-123456", server="VA1OSDWEB01", state=machine.State.AWAITING_BOOT,
                                 account="OSD")
    token = context.enter(SimpleNamespace(view=view, command="PollServer"))
    try:
        logger.info("polling %s", "VA1OSDWEB01", extra={"attempt": 2})
    finally:
        context.leave(token)
    logger.warning("outside a step")
    inside, outside = lines(stream)
    assert inside["message"] == "polling VA1OSDWEB01" and inside["level"] == "info" and inside["attempt"] == 2
    assert {k: inside[k] for k in context.FIELDS} == {"execution_id": "VA1-123456", "server": "VA1OSDWEB01",
                                                      "account": "OSD", "state": "awaiting_boot",
                                                      "step": "poll_server"}
    assert not set(context.FIELDS) & set(outside)


def test_a_batch_line_naming_an_execution_gets_its_context(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    view = machine.ExecutionView(id="VA1-654321", server="VA1OSDDB01", state=machine.State.REBOOTING, account="OSD")
    context.track(view.id, SimpleNamespace(view=view, command="RebootServer"))
    try:
        logger.warning("execution %s: %s (attempt %d)", "VA1-654321", "503", 1)
    finally:
        context.untrack(view.id)
    [line] = lines(stream)
    assert line["execution_id"] == "VA1-654321" and line["server"] == "VA1OSDDB01" and line["step"] == "reboot_server"


def test_exceptions_are_redacted_too(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    try:
        raise RuntimeError(f"login refused for Bearer {TOKEN}")
    except RuntimeError:
        logger.exception("failed")
    assert TOKEN not in stream.getvalue() and "Bearer ***" in lines(stream)[0]["exception"]  # type: ignore[operator]


def test_the_console_format_shows_the_context() -> None:
    stream = io.StringIO()
    handler = logs.handler("console", stream)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("password=hunter2-is-long",), None)
    for key, value in zip(context.FIELDS, ("VA1-123456", "S1", "OSD", "requested", "inspect_server"), strict=True):
        setattr(record, key, value)
    handler.handle(record)
    text = stream.getvalue()
    assert "[VA1-123456 S1 OSD requested inspect_server] hello password=***" in text
    with pytest.raises(ValueError, match="PATCHAAS_LOG_FORMAT"):
        logs.formatter("xml")


def test_the_uvicorn_config_is_a_valid_dict_config() -> None:
    import logging.config

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logging.config.dictConfig(logs.uvicorn_config("json", "warning"))
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
