"""The report channel's rules without I/O: URLs, bearer tokens, keys, strict validation of a posted report
(the pydantic model and schemas/cycle_report.schema.json agree on what is valid), digests, the driver's
parameters and the fleet wrapper that reads recorded reports first."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from pydantic import SecretStr

from orchestrator.services import auth, reports
from orchestrator.services.reports import InvalidReport
from schemas.fleet import CycleReport, CycleState, PackageRun, ResultCode, ServerStatus
from workers.fleet import clc_wire

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "schemas" / "cycle_report.schema.json").read_text())
SAMPLE = json.loads((ROOT / "workers" / "fleet" / "packages" / "windows-update.sample-report.json").read_text())
MINIMAL = {"key": "VA1-132457:package:1", "state": "finished", "started_at": "2026-11-26T01:00:00Z"}
UPDATE = {"kb": "KB3135998", "title": "Security Update (KB3135998)", "result_code": 2}


def test_the_report_url_is_the_base_url_plus_the_path() -> None:
    assert reports.report_url("https://patchaas.example/", "VA1-132457") == (
        "https://patchaas.example/v2/patchaas/executions/VA1-132457/reports"
    )
    assert reports.report_url("http://127.0.0.1:8080/api", "VA1-1") == (
        "http://127.0.0.1:8080/api/v2/patchaas/executions/VA1-1/reports"
    )


@pytest.mark.parametrize(
    "header,token",
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Basic abc", None),
        ("Bearer " + "x" * 201, None),
    ],
)
def test_the_bearer_token_of_an_authorization_header(header: str | None, token: str | None) -> None:
    assert reports.bearer_token(header) == token


def test_tokens_are_random_and_only_their_digest_is_kept() -> None:
    first, second = auth.new_token(), auth.new_token()
    assert first != second and len(first) >= 43
    assert auth.token_digest(first) != first and len(auth.token_digest(first)) == 64


def test_the_key_names_a_cycle_of_the_execution() -> None:
    assert reports.cycle_of("VA1-132457:package:3", "VA1-132457") == 3
    assert reports.execution_of("VA1-132457:package:3") == "VA1-132457"
    assert reports.execution_of("something-else") is None
    for key in ("VA1-999999:package:3", "VA1-132457:reboot:3", "VA1-132457:package:0", "VA1-132457:package:x"):
        with pytest.raises(InvalidReport, match="is not a cycle of execution VA1-132457"):
            reports.cycle_of(key, "VA1-132457")


def test_a_posted_report_is_parsed_into_the_model() -> None:
    report = reports.parse_report(json.dumps(SAMPLE).encode())
    assert report.state is CycleState.FINISHED and report.key == "VA1-132457:package:2"
    assert report == CycleReport.model_validate(SAMPLE)


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"", "needs a JSON body"),
        (b"   ", "needs a JSON body"),
        (b"{not json", "the body is not valid JSON"),
        (b"[]", "the body: Input should be an object"),
        (json.dumps({**MINIMAL, "state": "running"}).encode(), "when the cycle has finished"),
        (json.dumps({**MINIMAL, "updates": [{**UPDATE, "kb": "3135998"}]}).encode(), "body field updates.0.kb"),
        (json.dumps({**MINIMAL, "result_code": "2"}).encode(), "body field result_code"),
        (json.dumps({**MINIMAL, "hresult": "0x80070643"}).encode(), "body field hresult"),
        (json.dumps({k: v for k, v in MINIMAL.items() if k != "key"}).encode(), "body field key: Field required"),
        (b"{" + b'"x": "' + b"a" * reports.MAX_REPORT_BYTES + b'"}', "may not exceed"),
    ],
)
def test_a_bad_report_is_refused_with_the_rule_it_broke(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidReport, match=message) as refused:
        reports.parse_report(raw)
    assert refused.value.status == 400


def _model_accepts(sample: Any) -> bool:
    try:
        reports.parse_report(json.dumps(sample).encode())
    except InvalidReport as exc:
        assert "when the cycle has finished" not in exc.message  # every sample below is a finished one
        return False
    return True


def _with(**changes: Any) -> dict[str, Any]:
    sample = copy.deepcopy(SAMPLE)
    sample.update(changes)
    return sample


def _update(**changes: Any) -> dict[str, Any]:
    return _with(updates=[{**UPDATE, **changes}])


VALID = [
    SAMPLE,
    MINIMAL,
    _with(hresult=-2145124329),  # WUA's signed HRESULT as PowerShell writes it
    _with(hresult=4294967295),
    _with(finished_at=None, excluded=["KB3146723"]),
    _update(reboot_required=True, hresult=-2147023293, url="", classification="Critical Updates"),
    _update(kb="KB12345678", title="x" * 500),
    _with(extra_field_a_newer_script_sends="ignored"),
]
INVALID = [
    {k: v for k, v in SAMPLE.items() if k != "key"},
    {k: v for k, v in SAMPLE.items() if k != "started_at"},
    _with(state="done"),
    _with(key=12),
    _with(result_code=7),
    _with(result_code="2"),
    _with(hresult="0x80070643"),
    _with(hresult=2**32),
    _with(hresult=-(2**31) - 1),
    _with(hresult=None),
    _with(reboot_required="yes"),
    _with(updates={"kb": "KB3135998"}),
    _with(excluded="KB3146723"),
    _update(kb="KB123"),
    _update(kb="kb3135998"),
    _update(title=""),
    _update(title="x" * 501),
    _update(result_code=None),
    _update(reboot_required=1),
    [SAMPLE],
]


@pytest.mark.parametrize("sample", VALID, ids=[f"valid-{n}" for n in range(len(VALID))])
def test_the_model_and_the_json_schema_accept_the_same_reports(sample: Any) -> None:
    validator = jsonschema_rs.validator_for(SCHEMA)
    assert validator.is_valid(sample)
    assert _model_accepts(sample)


@pytest.mark.parametrize("sample", INVALID, ids=[f"invalid-{n}" for n in range(len(INVALID))])
def test_the_model_and_the_json_schema_refuse_the_same_reports(sample: Any) -> None:
    validator = jsonschema_rs.validator_for(SCHEMA)
    assert not validator.is_valid(sample)
    assert not _model_accepts(sample)


def test_the_same_report_has_the_same_digest_however_it_spells_an_hresult() -> None:
    signed = reports.parse_report(json.dumps(_update(hresult=-2147023293)).encode())
    unsigned = reports.parse_report(json.dumps(_update(hresult=2147944003)).encode())
    other = reports.parse_report(json.dumps(_update(hresult=0)).encode())
    digest = reports.body_digest
    assert digest(reports.canonical(signed)) == digest(reports.canonical(unsigned))
    assert digest(reports.canonical(signed)) != digest(reports.canonical(other))


def test_the_clc_driver_sends_the_channel_only_when_it_is_offered() -> None:
    run = PackageRun(package_id="p", execution_id="VA1-132457", cycle=2)
    plain = clc_wire.package_parameters(run, "VA1-132457:package:2")
    assert clc_wire.PARAM_REPORT_URL not in plain and clc_wire.PARAM_REPORT_TOKEN not in plain
    offered = run.model_copy(update={"report_url": "http://api/v2/x", "report_token": SecretStr("t0k")})
    params = clc_wire.package_parameters(offered, "VA1-132457:package:2")
    assert params[clc_wire.PARAM_REPORT_URL] == "http://api/v2/x" and params[clc_wire.PARAM_REPORT_TOKEN] == "t0k"
    assert "t0k" not in repr(offered)  # the token never shows in logs of the run


# --- the fleet wrapper, over an in-memory channel and a recording fleet ----------------------------


class MemoryChannel:
    """The two calls ReportingFleet makes of a ReportChannel."""

    def __init__(self) -> None:
        self.issued: list[tuple[str, str, str]] = []
        self.records: dict[tuple[str, str], CycleReport] = {}

    def issue(self, execution_id: str, key: str) -> str:
        token = f"token-{len(self.issued)}"
        self.issued.append((execution_id, key, token))
        return token

    def recorded(self, execution_id: str, key: str) -> CycleReport | None:
        return self.records.get((execution_id, key))


class RecordingFleet:
    def __init__(self) -> None:
        self.runs: list[PackageRun] = []
        self.asked: list[str] = []
        self.answer: CycleReport | None = None

    def status(self, server: str) -> ServerStatus:
        raise AssertionError("not used")

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        raise AssertionError("not used")

    def power_on(self, server: str, key: str) -> None:
        raise AssertionError("not used")

    def power_off(self, server: str, key: str) -> None:
        raise AssertionError("not used")

    def reboot(self, server: str, key: str) -> None:
        raise AssertionError("not used")

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        self.runs.append(run)

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        self.asked.append(key)
        return self.answer


def _report(key: str, code: ResultCode) -> CycleReport:
    return CycleReport(key=key, state=CycleState.FINISHED, started_at=datetime(2026, 11, 26, tzinfo=UTC),
                       result_code=code)


def test_the_wrapper_mints_a_token_per_invocation_and_hands_it_to_the_package() -> None:
    inner, channel = RecordingFleet(), MemoryChannel()
    fleet = reports.ReportingFleet(inner, channel, "http://api:8080")  # type: ignore[arg-type]
    run = PackageRun(package_id="p", execution_id="VA1-132457", cycle=1)
    fleet.invoke_package("VA1OSDPATCH01", "VA1-132457:package:1", run)
    fleet.invoke_package("VA1OSDPATCH01", "VA1-132457:package:1", run)  # a retried step: a new token
    assert [i[:2] for i in channel.issued] == [("VA1-132457", "VA1-132457:package:1")] * 2
    sent = inner.runs[-1]
    assert sent.report_url == "http://api:8080/v2/patchaas/executions/VA1-132457/reports"
    assert sent.report_token is not None and sent.report_token.get_secret_value() == "token-1"
    assert inner.runs[0].report_token is not None and inner.runs[0].report_token.get_secret_value() == "token-0"


def test_the_wrapper_answers_the_recorded_report_first_and_polls_the_fleet_otherwise() -> None:
    inner, channel = RecordingFleet(), MemoryChannel()
    fleet = reports.ReportingFleet(inner, channel, "http://api")  # type: ignore[arg-type]
    key = "VA1-132457:package:1"
    inner.answer = _report(key, ResultCode.SUCCEEDED)
    assert fleet.cycle_result("VA1OSDPATCH01", key) == inner.answer and inner.asked == [key]
    channel.records[("VA1-132457", key)] = _report(key, ResultCode.SUCCEEDED_WITH_ERRORS)
    got = fleet.cycle_result("VA1OSDPATCH01", key)
    assert got is not None and got.result_code is ResultCode.SUCCEEDED_WITH_ERRORS
    assert inner.asked == [key]  # the fleet was not asked again
    assert (fleet.from_channel, fleet.from_fleet) == (1, 1)
    inner.answer = None
    assert fleet.cycle_result("VA1OSDPATCH01", "not-our-key") is None and inner.asked[-1] == "not-our-key"
