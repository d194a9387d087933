"""`notifications.build_message` builds an email without parsing its repeated headers again, and must give
exactly the bytes of the full path (`set_content`, every header parsed), whatever the body's encoding."""

from __future__ import annotations

import types
from email.message import EmailMessage
from typing import Any

import pytest

from orchestrator.engine import notifications

BODIES = [
    "", "a", "a\n", "x\r\ny\rz\n\n", "line\n" * 5, "tail without a newline", "\n\n\n", "a\x1cb\n",
    "a" * 78 + "\n" + "b" * 78,  # the longest lines still 7bit
    "a" * 79 + "\n",  # too long for 7bit
    "Execution VA1-123456, 3 cycle(s), started 2026-12-03 14:00:00 UTC, ended 2026-12-03 14:01:00 UTC.\n" * 3,
    "Patching of VA1OSDWEB01 failed: KB5005565 café\n",  # not ASCII: 8bit
    "é" * 200 + "\n",  # not ASCII, long
    "\u2028 separator\n\x85next\n",
]


def _full(row: Any, sender: str) -> EmailMessage:
    """The straightforward build: every header parsed, the body encoded by `set_content`."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = row.recipient
    message["Subject"] = row.subject
    message["Message-ID"] = row.message_id
    message["X-Patchaas-Execution"] = row.execution_id
    message["X-Patchaas-Kind"] = row.kind
    message.set_content(row.body)
    return message


def _row(body: str, subject: str = "Patching completed on VA1OSDPATCH01 (VA1-123456)",
         recipient: str = "ops@osd.example") -> Any:
    return types.SimpleNamespace(recipient=recipient, subject=subject, message_id="<VA1-123456.end@patchaas>",
                                 execution_id="VA1-123456", kind="end", body=body)


@pytest.mark.parametrize("body", BODIES)
def test_an_email_has_the_bytes_of_the_full_path(body: str) -> None:
    for sender in ("patchaas@example.com", "Patch service <patchaas@example.com>"):
        row = _row(body)
        fast, full = notifications.build_message(row, sender), _full(row, sender)
        assert fast.as_bytes() == full.as_bytes()
        assert fast.get_content() == full.get_content() and fast["To"] == "ops@osd.example"


def test_subjects_and_recipients_still_parsed_each_time() -> None:
    long_subject = "Patching completed on " + "VA1OSDPATCH01 " * 12 + "(VA1-123456)"  # folded over lines
    for subject, recipient in ((long_subject, "ops@osd.example"), ("Café: patching done", "Ops <ops@osd.example>")):
        row = _row("Hello,\n\nThe run ended.\n", subject, recipient)
        fast, full = notifications.build_message(row, "p@example.com"), _full(row, "p@example.com")
        assert fast.as_bytes() == full.as_bytes()
        assert str(fast["Subject"]) == subject and fast["To"].addresses[0].addr_spec == "ops@osd.example"
