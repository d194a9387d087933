"""Webhook rules, pure: the Stripe-style signature and its verification (tampering, replay, rotation), the
retry schedule for up to 24 h, the rule that disables a subscription that keeps failing, the generic JSON,
Slack and Teams bodies, and the events a transition of the state machine implies."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import event_log, machine, webhook_formats, webhooks
from orchestrator.domain.events import InitiationRecord, PatchRecord

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
SECRET = "whsec_test_secret_0123456789"


def _event(kind: str = "run.ended", **data: object) -> webhooks.EventView:
    payload = {"server": "VA1OSDPATCH01", "status": "completed", "cycles": 2, "installedCount": 3,
               "quarantined": {}, "reason": None, **data}
    return webhooks.EventView(7, "0b5f1c1e-7d2a-4c69-9d1e-3f1f0c7d2a11", kind, "OSD", "VA1-123456", None, NOW, payload)


# --- the signature -------------------------------------------------------------------------------


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body() -> None:
    body = b'{"a":1}'
    header = webhooks.signature(SECRET, body, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_a_receiver_accepts_the_signature_and_refuses_tampering_replays_and_other_secrets() -> None:
    body = b'{"kind":"run.ended"}'
    header = webhooks.signature(SECRET, body, 1_700_000_000)
    assert webhooks.verify(SECRET, body, header, now=1_700_000_100)
    assert not webhooks.verify(SECRET, body + b" ", header, now=1_700_000_100)  # body changed
    assert not webhooks.verify("another-secret-of-16+", body, header, now=1_700_000_100)
    assert not webhooks.verify(SECRET, body, header, now=1_700_000_000 + 301)  # replayed 5 min later
    forged = header.replace("t=1700000000", "t=1700000300")  # a fresh timestamp on an old signature
    assert not webhooks.verify(SECRET, body, forged, now=1_700_000_300)
    assert not webhooks.verify(SECRET, body, "v1=abc", now=1_700_000_000)
    assert not webhooks.verify(SECRET, body, "t=soon,v1=abc", now=1_700_000_000)


def test_several_v1_values_verify_while_a_secret_rotates() -> None:
    body = b"{}"
    old = webhooks.signature("old-secret-0123456789", body, 1_700_000_000)
    both = f"{old},v1={webhooks.signature(SECRET, body, 1_700_000_000).rpartition('v1=')[2]}"
    assert webhooks.verify(SECRET, body, both, now=1_700_000_000)
    assert webhooks.verify("old-secret-0123456789", body, both, now=1_700_000_000)


def test_every_attempt_carries_the_stable_event_id_and_a_fresh_signature() -> None:
    event = _event()
    body = webhooks.body(event, "json")
    first = webhooks.headers(event, 11, 1, SECRET, body, 1_700_000_000)
    second = webhooks.headers(event, 11, 2, SECRET, body, 1_700_000_600)
    assert first[webhooks.EVENT_ID_HEADER] == second[webhooks.EVENT_ID_HEADER] == event.event_id
    assert first[webhooks.SIGNATURE_HEADER] != second[webhooks.SIGNATURE_HEADER]
    assert webhooks.verify(SECRET, body, second[webhooks.SIGNATURE_HEADER], now=1_700_000_600)
    assert (first[webhooks.ATTEMPT_HEADER], second[webhooks.ATTEMPT_HEADER]) == ("1", "2")
    assert first["Content-Type"] == "application/json" and first[webhooks.EVENT_KIND_HEADER] == "run.ended"


# --- retries and disabling ----------------------------------------------------------------------------


def test_the_backoff_doubles_up_to_its_cap() -> None:
    base, cap = timedelta(seconds=10), timedelta(hours=1)
    assert [webhooks.backoff(n, base, cap).total_seconds() for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert webhooks.backoff(12, base, cap) == cap
    assert webhooks.backoff(10_000, base, cap) == cap  # no overflow


def test_a_delivery_is_retried_for_24_hours_with_the_last_attempt_at_the_limit() -> None:
    base, cap, age = timedelta(seconds=10), timedelta(hours=1), timedelta(hours=24)
    first = NOW
    at, attempts, schedule = NOW, 0, []
    while True:
        attempts += 1
        nxt = webhooks.next_attempt(attempts, first, at, base, cap, age)
        if nxt is None:
            break
        schedule.append(nxt)
        at = nxt
    assert schedule[0] == NOW + timedelta(seconds=10)
    assert schedule[-1] == first + age  # the last try is at 24 h, never later
    assert all(b > a for a, b in zip(schedule, schedule[1:], strict=False))
    assert 25 <= len(schedule) <= 40  # 10 s, 20 s, … then hourly
    assert webhooks.next_attempt(1, first, first + age, base, cap, age) is None


def test_a_subscription_is_disabled_after_24_hours_of_failures_and_not_before() -> None:
    after, least = timedelta(hours=24), 5
    since = NOW - timedelta(hours=25)
    assert webhooks.disable_reason(0, None, NOW, after, least) is None  # never failed
    assert webhooks.disable_reason(30, NOW - timedelta(hours=23), NOW, after, least) is None  # not for 24 h yet
    assert webhooks.disable_reason(2, since, NOW, after, least) is None  # one late failure after a quiet day
    reason = webhooks.disable_reason(17, since, NOW, after, least)
    assert reason is not None and "17 failed attempts in a row over 25 h" in reason
    assert "enable it again" in reason


def test_only_2xx_is_delivered() -> None:
    assert webhooks.describe_status(200) is None and webhooks.describe_status(204) is None
    assert webhooks.describe_status(301) == "HTTP 301"  # redirects are not followed
    assert webhooks.describe_status(500) == "HTTP 500"


# --- the bodies --------------------------------------------------------------------------------------


def test_the_generic_json_body_is_the_event_envelope_and_stable() -> None:
    event = _event()
    body = webhooks.body(event, "json")
    assert body == webhooks.body(event, "json")
    doc = json.loads(body)
    assert doc == {"id": event.event_id, "sequence": 7, "kind": "run.ended", "account": "OSD",
                   "executionId": "VA1-123456", "actor": None, "createdAt": "2026-11-10T09:00:00.000000Z",
                   "data": dict(event.payload)}
    with pytest.raises(ValueError, match="unknown webhook format"):
        webhooks.body(event, "xml")


def test_slack_gets_text_and_blocks_with_escaped_mrkdwn() -> None:
    event = _event(status="failed", reason="KB5005 <script> & more", quarantined={"KB5005": "failed twice"})
    doc = json.loads(webhooks.body(event, "slack"))
    assert doc["text"].startswith("Patching failed on VA1OSDPATCH01")
    section = doc["blocks"][0]["text"]["text"]
    assert ":rotating_light:" in section and "&lt;script&gt; &amp; more" in section and "<script>" not in section
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in doc["blocks"][1]["fields"]}
    assert fields["*Quarantined*"] == "KB5005" and fields["*Execution*"] == "VA1-123456"
    assert event.event_id in doc["blocks"][-1]["elements"][0]["text"]


def test_teams_gets_an_adaptive_card_message() -> None:
    doc = json.loads(webhooks.body(_event(), "teams"))
    assert doc["type"] == "message"
    attachment = doc["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["body"][0]["text"] == "Patching completed on VA1OSDPATCH01" and card["body"][0]["color"] == "Good"
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts["Installed"] == "3" and facts["Account"] == "OSD"


@pytest.mark.parametrize("kind", sorted(event_log.KINDS))
def test_every_kind_has_words_in_every_format(kind: str) -> None:
    event = dataclasses.replace(_event(), kind=kind, payload={"name": "nightly", "kb": "KB1", "cycle": 1})
    summary = webhook_formats.summarize(kind, webhooks.envelope(event))
    assert summary.title and summary.tone in ("good", "bad", "info")
    for fmt in webhooks.FORMATS:
        assert json.loads(webhooks.body(event, fmt))


# --- events of a transition -------------------------------------------------------------------------


def _view(state: machine.State, **changes: object) -> machine.ExecutionView:
    base = machine.ExecutionView(id="VA1-123456", server="VA1OSDPATCH01", state=state, version=3, cycle=1)
    return dataclasses.replace(base, **changes)


def _decision(view: machine.ExecutionView, **changes: object) -> machine.Decision:
    return machine.Decision(view, None, "note", **changes)  # type: ignore[arg-type]


def test_leaving_requested_is_run_started_and_a_poll_is_nothing() -> None:
    old = _view(machine.State.REQUESTED, cycle=0)
    facts = event_log.of_decision(old, _decision(_view(machine.State.ENTERING_MAINTENANCE, cycle=0)))
    assert [(f.kind, f.execution_id, f.payload["state"]) for f in facts] == [
        ("run.started", "VA1-123456", "entering_maintenance")]
    waiting = _view(machine.State.AWAITING_BOOT)
    assert event_log.of_decision(waiting, _decision(waiting)) == []


def test_a_cycle_with_a_quarantined_kb_is_cycle_ended_and_kb_quarantined() -> None:
    patches = tuple(PatchRecord(kb, kb, "", "", code, 0x80070643 if code == 4 else 0, False,
                                "completed" if code == 2 else "failed", "", "")
                    for kb, code in (("KB1", 2), ("KB2", 4)))
    record = InitiationRecord(1, NOW, NOW, "", "", 2, True, 3, 0x80070643, patches)
    old = _view(machine.State.AWAITING_RESULT, quarantined={})
    new = _view(machine.State.REBOOTING, quarantined={"KB2": "failed 2 times"})
    facts = event_log.of_decision(old, _decision(new, initiation=record))
    assert [f.kind for f in facts] == ["cycle.ended", "kb.quarantined"]
    assert facts[0].payload["installed"] == ["KB1"] and facts[0].payload["failed"] == ["KB2"]
    assert facts[0].payload["hresult"] == "0x80070643" and facts[0].payload["rebootRequired"] is True
    assert facts[1].payload["kb"] == "KB2" and facts[1].payload["reason"] == "failed 2 times"


def test_the_end_is_run_ended_and_a_failed_cleanup_also_leaves_the_server_in_maintenance() -> None:
    done = event_log.of_decision(_view(machine.State.EXITING_MAINTENANCE, outcome=machine.Outcome.COMPLETED),
                                 _decision(_view(machine.State.COMPLETED, outcome=machine.Outcome.COMPLETED)))
    assert [f.kind for f in done] == ["run.ended"] and done[0].payload["status"] == "completed"
    reason = "server did not start; cleanup stopped: turning maintenance mode off failed 6 times"
    stuck = event_log.of_decision(
        _view(machine.State.EXITING_MAINTENANCE, failure_reason="server did not start"),
        _decision(_view(machine.State.FAILED, outcome=machine.Outcome.FAILED, failure_reason=reason)))
    assert [f.kind for f in stuck] == ["run.ended", "server.left_in_maintenance"]
    assert stuck[1].payload["reason"] == reason
    powered = event_log.of_decision(  # maintenance was off already: only the power could not be restored
        _view(machine.State.RESTORING_POWER),
        _decision(_view(machine.State.FAILED, outcome=machine.Outcome.FAILED, failure_reason=reason)))
    assert [f.kind for f in powered] == ["run.ended"]


def test_a_run_refused_before_it_started_ends_without_starting() -> None:
    facts = event_log.of_decision(_view(machine.State.REQUESTED, cycle=0), _decision(
        _view(machine.State.FAILED, cycle=0, outcome=machine.Outcome.FAILED, failure_reason="unsupported OS")))
    assert [f.kind for f in facts] == ["run.ended"] and facts[0].payload["reason"] == "unsupported OS"
