"""Chat formatters for webhook events: a Slack incoming webhook (`text` plus Block Kit blocks) and a Microsoft
Teams webhook (an Adaptive Card in a `message`, what Teams' Workflows "post to a channel when a webhook
request is received" and the older connectors both take). Pure: an event's envelope in, a JSON document out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GOOD, BAD, INFO = "good", "bad", "info"


@dataclass(frozen=True)
class Summary:
    """An event in words: a title, one line of detail, facts (name, value) and a tone."""

    title: str
    text: str
    facts: tuple[tuple[str, str], ...]
    tone: str


def summarize(kind: str, envelope: Mapping[str, Any]) -> Summary:
    """The words of one event (generic for the kinds without their own)."""
    data: Mapping[str, Any] = envelope.get("data") or {}
    server = str(data.get("server") or "")
    execution = str(envelope.get("executionId") or "")
    on = f" on {server}" if server else ""
    facts: list[tuple[str, str]] = [("Account", str(envelope.get("account", "")))]
    if execution:
        facts.append(("Execution", execution))
    if envelope.get("actor"):
        facts.append(("By", str(envelope["actor"])))
    tone, text = INFO, str(data.get("reason") or "")
    if kind == "run.ended":
        status = str(data.get("status", ""))
        tone = GOOD if status == "completed" else BAD if status == "failed" else INFO
        title = f"Patching {status}{on}"
        facts += [("Cycles", str(data.get("cycles", 0))), ("Installed", str(data.get("installedCount", 0)))]
        quarantined = data.get("quarantined") or {}
        if quarantined:
            facts.append(("Quarantined", ", ".join(sorted(quarantined))))
    elif kind == "run.started":
        title = f"Patching started{on}"
    elif kind == "run.requested":
        title = f"Patching requested{on}"
    elif kind == "run.cancel_requested":
        title, tone = f"Cancel requested{on}", INFO
    elif kind == "cycle.ended":
        title = f"Cycle {data.get('cycle')} ended{on}"
        installed, failed = data.get("installed") or [], data.get("failed") or []
        text = f"{data.get('updatesFound', 0)} offered, {len(installed)} installed, {len(failed)} failed"
        if failed:
            tone = BAD
            facts.append(("Failed", ", ".join(failed)))
        if data.get("rebootRequired"):
            facts.append(("Reboot", "required"))
    elif kind == "kb.quarantined":
        title, tone = f"{data.get('kb')} quarantined{on}", BAD
    elif kind == "server.left_in_maintenance":
        title, tone = f"{server or 'A server'} is still in maintenance mode", BAD
        text = f"{text} — turn maintenance mode off in the control portal once the server is checked."
    elif kind == "rollout.halted":
        title, tone = f"Rollout {data.get('rolloutId')} halted", BAD
    elif kind in ("window.opened", "window.closed"):
        title = f"Patch window {data.get('name', data.get('windowId'))} {kind.split('.')[1]}"
        text = str(data.get("note") or "")
        if "queued" in data:
            facts.append(("Servers queued", str(data["queued"])))
    elif kind == "webhook.disabled":
        title, tone = f"Webhook {data.get('name')} disabled", BAD
    elif kind == "hook.failed":  # a pre/post hook of a run (docs/HOOKS.md)
        title, tone = f"Hook {data.get('hook')} failed at {data.get('point')}{on}", BAD
        text = str(data.get("output") or data.get("status") or "")
        facts.append(("On failure", str(data.get("onFailure") or "fail")))
    else:
        subject = data.get("name") or data.get("username") or ""
        title = f"{kind.replace('.', ' ').replace('_', ' ').capitalize()}{': ' + str(subject) if subject else ''}"
    return Summary(title, text, tuple(facts), tone)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SLACK_ICON = {GOOD: ":white_check_mark:", BAD: ":rotating_light:", INFO: ":information_source:"}


def slack(kind: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (notifications, old clients) and blocks."""
    s = summarize(kind, envelope)
    title = _slack_escape(s.title)
    lines = f"{_SLACK_ICON[s.tone]} *{title}*" + (f"\n{_slack_escape(s.text)}" if s.text else "")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": lines[:3000]}}]
    if s.facts:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{_slack_escape(name)}*\n{_slack_escape(value)[:1900]}"}
            for name, value in s.facts[:10]]})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"`{kind}` · event {envelope.get('id')} · {envelope.get('createdAt')}"}]})
    return {"text": f"{s.title}{': ' + s.text if s.text else ''}"[:3000], "blocks": blocks}


_TEAMS_COLOR = {GOOD: "Good", BAD: "Attention", INFO: "Default"}


def teams(kind: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """A Microsoft Teams message carrying one Adaptive Card (schema 1.4)."""
    s = summarize(kind, envelope)
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": s.title, "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": _TEAMS_COLOR[s.tone]},
    ]
    if s.text:
        body.append({"type": "TextBlock", "text": s.text, "wrap": True})
    if s.facts:
        body.append({"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in s.facts]})
    body.append({"type": "TextBlock", "text": f"{kind} · event {envelope.get('id')} · {envelope.get('createdAt')}",
                 "isSubtle": True, "size": "Small", "wrap": True})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "body": body}
    return {"type": "message", "summary": s.title,
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
                             "content": card}]}
