"""Log lines of the API, the workers and beat: one JSON object per line (`PATCHAAS_LOG_FORMAT=json`) or a
readable line (`console`, the default), both with the current step's context (`context.ContextFilter`) and
both passed through `redact`: the secrets patchaas holds (passwords, bearer and report tokens, the contents
of SSH keys, credentials in URLs) never reach a log, whoever wrote the line (our code, Celery, uvicorn,
httpx, paramiko).

`configure` installs one handler on the root logger; `uvicorn_config` is the same as a dictConfig for
uvicorn (which configures logging in each of its worker processes).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from orchestrator.observability.context import FIELDS, ContextFilter

FORMATS = ("console", "json")
MASK = "***"

# what a secret looks like wherever it is written: `Bearer <token>`; `password=…`, `"reportToken": "…"`,
# `report_token='…'`, `clc_password: …` (any key naming a password, secret or token); `scheme://user:pass@`;
# a PEM or OpenSSH private key block
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     "-----PRIVATE KEY " + MASK + "-----"),
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2" + MASK),
    (re.compile(r"(?i)([\w-]*(?:password|passwd|secret|token)[\w-]*)(['\"]?\s*[:=]\s*(?:SecretStr\()?['\"]?)"
                r"(?!\*\*\*)[^\s'\",;}&)\]]+"), r"\1\2" + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), r"\1" + MASK + "@"),
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """A value to mask wherever it appears (a configured password); short values are left alone."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName",
                                                                                "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, the step's context,
    any `extra=` fields, and the exception; every string redacted."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, int | float | bool) or value is None else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(data, ensure_ascii=False, default=str))


class ConsoleFormatter(logging.Formatter):
    """`time level logger [execution server account state step] message`, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(patchaas_context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        values = [str(getattr(record, key, "") or "") for key in FIELDS]
        record.patchaas_context = f" [{' '.join(v or '-' for v in values)}]" if values[0] else ""
        try:
            return redact(super().format(record))
        finally:
            del record.patchaas_context


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (PATCHAAS_LOG_FORMAT): {' or '.join(FORMATS)}")
    return JsonFormatter() if fmt == "json" else ConsoleFormatter()


def handler(fmt: str, stream: Any = None) -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(formatter(fmt))
    out.addFilter(ContextFilter())
    return out


def configure(fmt: str = "console", level: str | int = "INFO", stream: Any = None) -> logging.Handler:
    """One handler on the root logger (any other removed), at `level`."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    out = handler(fmt, stream)
    root.addHandler(out)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # a library's warning is a log line too (JSON like the rest)
    return out


def uvicorn_config(fmt: str, level: str) -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers and ours through the same handler, formatter and filters."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"patchaas": {"()": formatter, "fmt": fmt}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                 "formatter": "patchaas", "filters": ["context"]}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True, "level": level.upper()}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
