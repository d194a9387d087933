"""The webhook sender refuses non-public receivers unless allowed and follows no redirect; secrets are sealed
(never stored in clear) or read from a reference, and a key rotation keeps old ones readable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from orchestrator.engine import webhook_secrets
from workers import webhooks


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x"])
def test_non_public_receivers_are_refused_by_default(url: str) -> None:
    sender = webhooks.HttpxWebhookSender(timeout=1, connect_timeout=1)
    with pytest.raises(webhooks.BlockedAddress, match="non-public address"):
        sender.post(url, b"{}", {})


def test_only_http_urls_are_sent() -> None:
    with pytest.raises(ValueError, match="not an http"):
        webhooks.HttpxWebhookSender(allow_private=True).post("file:///etc/passwd", b"", {})


def test_the_memory_sender_keeps_what_it_sent() -> None:
    sender = webhooks.MemoryWebhookSender(answer=lambda url: 500 if "down" in url else 200)
    assert sender.post("https://down.example/h", b"a", {"X": "1"}) == 500
    assert sender.post("https://up.example/h", b"b", {}) == 200
    assert [s.body for s in sender.sent] == [b"a", b"b"]


def test_a_sealed_secret_is_not_stored_in_clear_and_survives_a_key_rotation() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = webhook_secrets.seal("whsec_abcdefghijklmnop", old)
    assert "abcdefghijklmnop" not in token
    assert webhook_secrets.resolve(token, None, f"{new},{old}") == "whsec_abcdefghijklmnop"
    with pytest.raises(webhook_secrets.SecretUnavailable, match="does not open"):
        webhook_secrets.resolve(token, None, new)
    with pytest.raises(webhook_secrets.SecretUnavailable, match="no PATCHAAS_WEBHOOK_KEY"):
        webhook_secrets.seal("whsec_abcdefghijklmnop", None)
    with pytest.raises(webhook_secrets.SecretUnavailable, match="not a Fernet key"):
        webhook_secrets.seal("whsec_abcdefghijklmnop", "not-a-key")


def test_a_secret_reference_is_read_by_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET_FOR_TEST", "from-the-environment")
    assert webhook_secrets.resolve(None, "env:HOOK_SECRET_FOR_TEST", None) == "from-the-environment"
    (tmp_path / "secret").write_text("from-a-file\n")
    assert webhook_secrets.resolve(None, f"file:{tmp_path / 'secret'}", None) == "from-a-file"
    with pytest.raises(webhook_secrets.SecretUnavailable, match="does not have"):
        webhook_secrets.resolve(None, "env:NOT_SET_ANYWHERE_42", None)
    for bad in ("HOOK", "env:", "env:1X", "file:relative", "https://x"):
        with pytest.raises(ValueError):
            webhook_secrets.check_ref(bad)
    assert webhook_secrets.generate().startswith("whsec_")
