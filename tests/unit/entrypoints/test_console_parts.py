"""The console's pure parts: CSRF and session cookies, CSV (and Accept negotiation), HRESULTs in words, the
pictures' geometry (donut, timeline, calendar) and the action form's validation (the REST models' messages,
each beside its field)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest

from orchestrator.entrypoints.console import charts, csv_export, forms, session, words
from orchestrator.services.compliance import ComplianceReport, ServerCompliance
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import ExecutionDetail, ExecutionSummary, InitMessage, PatchDetail

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
DOWNLOADED = "Updates Downloaded Successfully downloaded 2 updates to install"


# --- session and CSRF -------------------------------------------------------------------------------


def test_the_csrf_token_is_bound_to_its_session() -> None:
    token = session.csrf_token("session-a")
    assert token == session.csrf_token("session-a") and len(token) == 64
    assert session.csrf_ok("session-a", token)
    assert not session.csrf_ok("session-b", token)
    assert not session.csrf_ok("session-a", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not session.csrf_ok("session-a", None) and not session.csrf_ok(None, token)
    assert not session.csrf_ok("session-a", "")


def test_the_login_forms_double_submit_token() -> None:
    first, second = session.new_login_token(), session.new_login_token()
    assert first != second and len(first) >= 32
    assert session.login_csrf_ok(first, first)
    assert not session.login_csrf_ok(first, second)
    assert not session.login_csrf_ok(None, first) and not session.login_csrf_ok(first, None)


def test_cookies_are_httponly_samesite_strict_and_secure_over_https() -> None:
    plain = session.cookie_options(False)
    assert plain == {"httponly": True, "samesite": "strict", "secure": False, "path": "/console"}
    assert session.cookie_options(True, timedelta(hours=12)) == {**plain, "secure": True, "max_age": 43200}


@pytest.mark.parametrize("target,expected", [
    ("/console/servers/VA1OSDPATCH01?limit=5", "/console/servers/VA1OSDPATCH01?limit=5"),
    ("https://evil.example/console/", "/console/"), ("//evil.example", "/console/"),
    ("/console//evil.example", "/console/"), ("/console/\\evil", "/console/"), ("/v2/servers", "/console/"),
    (None, "/console/"), ("", "/console/"),
])
def test_after_login_only_a_console_path_of_this_site(target: str | None, expected: str) -> None:
    assert session.safe_next(target) == expected


# --- CSV --------------------------------------------------------------------------------------------


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def summary(execution_id: str, cycles: int) -> ExecutionSummary:
    return ExecutionSummary(
        execution_id=execution_id, status="completed", start_time=T0, end_time=T0 + timedelta(minutes=20),
        init_messages=[InitMessage(start_time=T0, end_time=T0 + timedelta(minutes=5),
                                   init_begin_message="Invoking SUS API", init_end_message=f"{DOWNLOADED}##u1 u2##",
                                   cycle=c, updates_found=2, reboot_required=c < cycles) for c in range(1, cycles + 1)],
        state="completed", server="VA1OSDPATCH01")


def test_history_csv_has_one_row_per_execution_in_iso_utc() -> None:
    text = csv_export.history_csv([summary("VA1-000002", 3), summary("VA1-000001", 1)])
    assert text.endswith("\r\n")
    rows = parse(text)
    assert rows[0] == list(csv_export.HISTORY_COLUMNS)
    assert rows[1] == ["VA1-000002", "VA1OSDPATCH01", "completed", "completed", "2026-11-10T09:00:00Z",
                       "2026-11-10T09:20:00Z", "3", "6", "2", DOWNLOADED]
    assert rows[2][0] == "VA1-000001" and rows[2][6:9] == ["1", "2", "0"]


def test_patches_csv_says_result_codes_and_hresults_in_words() -> None:
    patch = PatchDetail(start_time=T0, end_time=T0, patch_begin_message="Installing x",
                        patch_end_message="Result Code: 4", status="failed", kb="KB3045685",
                        title='=HYPERLINK("http://evil")', url="u",
                        classification="Security Updates", cycle=2, result_code=4, hresult="0x80070643",
                        reboot_required=False)
    detail = ExecutionDetail(execution_id="VA1-000001", status="failed", start_time=T0, end_time=T0, duration="0m 0s",
                             begin_message="b", end_message="e", patches=[patch], server="VA1OSDPATCH01",
                             state="failed", cycles=2, installed_count=0, failed_count=1, failure_reason="f",
                             quarantined={})
    row = dict(zip(csv_export.PATCH_COLUMNS, parse(csv_export.patches_csv(detail))[1], strict=True))
    assert row["result"] == "failed" and row["hresult"] == "0x80070643"
    assert row["hresult_text"].startswith("ERROR_INSTALL_FAILURE")
    assert row["title"] == "'=HYPERLINK(\"http://evil\")"  # a formula is written as text
    assert row["reboot_required"] == "false" and row["cycle"] == "2"


def test_compliance_csv_one_row_per_server() -> None:
    found = ComplianceReport("OSD", T0, (
        ServerCompliance("VA1OSDPATCH01", "Windows", "compliant", "ok", "VA1-000001", "completed", T0, 3),
        ServerCompliance("VA1OSDPATCH02", "Windows", "non_compliant", "scan", missing=("KB1234567", "KB7654321"),
                         stale=True)))
    rows = parse(csv_export.compliance_csv(found))
    assert rows[0] == list(csv_export.COMPLIANCE_COLUMNS)
    assert rows[1][:4] == ["VA1OSDPATCH01", "Windows", "compliant", "false"] and rows[1][7] == "2026-11-10T09:00:00Z"
    assert rows[2][2:4] == ["non_compliant", "true"] and rows[2][9] == "KB1234567 KB7654321"


@pytest.mark.parametrize("accept,csv_wanted", [
    (None, False), ("", False), ("*/*", False), ("application/json", False), ("text/csv", True),
    ("text/csv, application/json", True), ("application/json, text/csv", False),
    ("application/json;q=0.5, text/csv", True), ("text/csv;q=0.2, application/json", False),
    ("text/csv;q=0", False), ("text/*", True), ("text/html,*/*;q=0.8", False), ("TEXT/CSV", True),
])
def test_accept_chooses_csv_only_when_it_is_preferred(accept: str | None, csv_wanted: bool) -> None:
    assert csv_export.wants_csv(accept) is csv_wanted


# --- words --------------------------------------------------------------------------------------------


def test_hresults_and_result_codes_in_words() -> None:
    assert words.hresult_words("0x80070643") == "ERROR_INSTALL_FAILURE: fatal error during installation"
    assert words.hresult_words(-2147023293) == words.hresult_words("0x80070643")  # signed, as WUA writes it
    assert words.hresult_words("0x00000000") == "S_OK: no error"
    assert "a Windows Update error" in words.hresult_words("0x8024FFFF")
    assert words.hresult_words("nonsense") == "nonsense" and words.hresult_words(None) == ""
    assert words.result_code_words(2) == "succeeded" and words.result_code_words(4) == "failed"
    assert words.result_code_words(9) == "result code 9"


def test_kbs_link_to_their_support_page() -> None:
    assert words.kb_url("KB3045685") == "https://support.microsoft.com/help/3045685"
    assert words.kb_url("kb890830") == "https://support.microsoft.com/help/890830"
    assert words.kb_url("openssl") is None and words.kb_url("KB") is None


# --- pictures -------------------------------------------------------------------------------------------


def test_the_donut_slices_add_up_to_the_circle() -> None:
    arcs = charts.donut({"compliant": 3, "non_compliant": 1, "unknown": 0})
    assert [a.key for a in arcs] == ["compliant", "non_compliant"]
    circumference = 2 * 3.141592653589793 * 40
    lengths = [float(a.dasharray.split()[0]) for a in arcs]
    assert sum(lengths) == pytest.approx(circumference, rel=1e-4)
    assert float(arcs[1].dashoffset) == pytest.approx(-lengths[0], rel=1e-4)
    assert [a.percent for a in arcs] == [75, 25]
    assert charts.donut({"compliant": 0}) == []


def test_the_timeline_merges_the_states_of_one_step() -> None:
    at = [T0 + timedelta(seconds=s) for s in range(0, 100, 10)]
    transitions = [
        (at[1], "requested", "entering_maintenance", 0), (at[2], "entering_maintenance", "checking_pending_reboot", 0),
        (at[3], "checking_pending_reboot", "invoking_package", 1), (at[4], "invoking_package", "awaiting_result", 1),
        (at[5], "awaiting_result", "rebooting", 1), (at[6], "rebooting", "awaiting_boot", 1),
        (at[7], "awaiting_boot", "invoking_package", 2), (at[8], "invoking_package", "awaiting_result", 2),
    ]
    found = charts.steps(T0, None, at[9], transitions)
    assert [(s.lane, s.label) for s in found] == [
        ("checks", "inspect"), ("maintenance", "maintenance on"), ("checks", "pending reboot check"),
        ("update cycles", "cycle 1"), ("reboots", "reboot after cycle 1"), ("update cycles", "cycle 2")]
    assert found[3].duration == "0m 20s" and found[4].duration == "0m 20s"
    assert found[-1].running and not found[0].running and found[-1].end == at[9]
    drawn = charts.timeline(found)
    assert len(drawn.bars) == 6 and [lane for lane, _ in drawn.lanes] == ["maintenance", "update cycles", "reboots",
                                                                          "checks"]
    assert drawn.bars[0].x == drawn.left and all(b.x + b.width <= drawn.width for b in drawn.bars)
    assert charts.timeline([]).bars == ()


def test_an_ended_run_has_no_running_step_and_drops_the_final_state() -> None:
    transitions = [(T0 + timedelta(seconds=5), "exiting_maintenance", "completed", 1)]
    found = charts.steps(T0, T0 + timedelta(seconds=5), T0 + timedelta(hours=1), transitions)
    assert [(s.label, s.running) for s in found] == [("maintenance off", False)]


def test_the_month_calendar_puts_occurrences_on_their_utc_day() -> None:
    entries = [("patch-friday", datetime(2026, 12, 11, 22, 0, tzinfo=UTC), 1),
               ("nightly", datetime(2026, 12, 11, 2, 0, tzinfo=UTC), 2)]
    month = charts.month(2026, 12, date(2026, 12, 3), entries)
    assert month.title == "December 2026" and month.previous == "2026-11" and month.following == "2027-01"
    days = {d.day: d for week in month.weeks for d in week}
    assert [e[0] for e in days[date(2026, 12, 11)].entries] == ["nightly", "patch-friday"]
    assert days[date(2026, 12, 3)].today and not days[date(2026, 11, 30)].in_month
    assert all(len(week) == 7 and week[0].day.weekday() == 0 for week in month.weeks)
    assert charts.parse_month("2027-01", T0) == (2027, 1) and charts.parse_month("junk", T0) == (2026, 11)
    assert charts.month_bounds(2026, 12) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


# --- the action form ---------------------------------------------------------------------------------


def values(**given: object) -> dict[str, object]:
    base = forms.empty_values()
    base.update(given)
    return base


def test_a_valid_form_is_the_rest_body() -> None:
    form = forms.action_form(values(target="groups", groups="va1-0001, va1-0002", includeKbs="kb3045685",
                                    classifications=["Security Updates"], scanOnly=True, maxConcurrency="10%",
                                    waves="va1-0002\nVA1OSDPATCH01, VA1OSDPATCH02"))
    assert form.valid, form.errors
    assert form.names == ["va1-0001", "va1-0002"] and form.package is not None
    assert form.package.package_id == DEFAULT_PACKAGE_ID
    assert form.package.parameters == {"includeKbs": "kb3045685", "classifications": ["Security Updates"],
                                       "rebootPolicy": "if_required", "scanOnly": True}
    assert form.rate is not None and str(form.rate.max_concurrency) == "10%"
    assert form.rate.waves == (("va1-0002",), ("VA1OSDPATCH01", "VA1OSDPATCH02"))


@pytest.mark.parametrize("given,field,words_", [
    ({"includeKbs": "KB12"}, "includeKbs", "invalid package parameters: includeKbs: Value error, not KB numbers"),
    ({"severities": ["Dire"]}, "severities", "not MSRC severities"),
    ({"approveAfterDays": "366"}, "approveAfterDays", "from 0 to 365"),
    ({"packageExclusions": "bad glob!"}, "packageExclusions", "not safe package globs"),
    ({"rebootPolicy": "sometimes"}, "rebootPolicy", "rebootPolicy"),
    ({"groups": "group-one"}, "groups", "body field groups.0: must be group ids like va1-0001"),
    ({"groups": ""}, "groups", "body field groups: List should have at least 1 item"),
    ({"maxConcurrency": "0"}, "maxConcurrency", "maxConcurrency must be at least 1"),
    ({"maxErrors": "lots"}, "maxErrors", "body field maxErrors"),
    ({"packageId": "nope"}, "packageId", "unknown package 'nope'"),
    ({"target": "servers", "servers": ""}, "servers", "body field servers: List should have at least 1 item"),
    ({"target": "servers", "servers": "VA1OSDPATCH01", "maxConcurrency": "x"}, "maxConcurrency",
     "body field maxConcurrency"),
])
def test_each_refusal_is_the_rest_message_beside_its_field(given: dict[str, object], field: str, words_: str) -> None:
    form = forms.action_form(values(**{"groups": "va1-0001", **given}))
    assert not form.valid
    assert words_ in form.errors[field], form.errors


def test_names_split_on_lines_commas_and_spaces() -> None:
    assert forms.split_names(" VA1OSDPATCH01,VA1OSDPATCH02\nVA1OSDPATCH03  VA1OSDPATCH04;") == [
        "VA1OSDPATCH01", "VA1OSDPATCH02", "VA1OSDPATCH03", "VA1OSDPATCH04"]
    assert forms.waves_of("va1-0002\n\n a, b ") == [["va1-0002"], ["a", "b"]]


def test_a_cancel_reason_is_validated_as_the_rest_body() -> None:
    assert forms.cancel_reason("  change freeze ") == ("change freeze", None)
    assert forms.cancel_reason("") == (None, None)
    reason, refusal = forms.cancel_reason("x" * 2001)
    assert reason is None and refusal is not None and "body field reason" in refusal


def test_a_form_shows_every_refusal_at_once() -> None:
    form = forms.action_form(values(groups="va1-0001", includeKbs="KB12", approveAfterDays="400", maxConcurrency="0",
                                    packageId="nope"))
    assert set(form.errors) == {"includeKbs", "approveAfterDays", "maxConcurrency", "packageId"}


def test_fragments_are_kept_by_their_json_and_bounded() -> None:
    from orchestrator.entrypoints.console.fragments import Fragments

    kept = Fragments(max_bytes=100)
    kept.put("row", b"a" * 10, "<tr>a</tr>", 20)
    kept.put("row", b"b" * 10, "<tr>b</tr>", 20)
    assert kept.get("row", b"a" * 10) == "<tr>a</tr>" and kept.get("detail", b"a" * 10) is None
    kept.put("row", b"c" * 10, "<tr>c</tr>", 50)  # over 100 bytes: the least recently used (b) goes
    assert kept.get("row", b"b" * 10) is None and kept.get("row", b"a" * 10) == "<tr>a</tr>"
    assert kept.size <= 100
    kept.put("row", b"d", "x", 1000)  # larger than the whole cache: not kept
    assert kept.get("row", b"d") is None
    kept.clear()
    assert len(kept) == 0 and kept.size == 0
