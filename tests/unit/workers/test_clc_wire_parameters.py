"""What the engine sends the Windows package (workers/fleet/clc_wire.py `package_parameters`), bound against the
package's manifest (workers/fleet/packages/windows-update.manifest.json): every parameter a string in the
format the script reads, every name a parameter of the manifest, no two bound to one script parameter, the
engine's deadline, heartbeat period, update service and the quarantined KBs; and every selection field of
schemas/selection.py that the package does not honour refused at request time (and honoured for Linux)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.domain import machine, packages
from orchestrator.domain.machine import ExecutionView, Policy, State
from schemas import selection
from schemas.fleet import PackageRun
from workers.fleet import clc_wire

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = json.loads((ROOT / "workers" / "fleet" / "packages" / "windows-update.manifest.json").read_text())
BY_NAME = {p["name"]: p for p in MANIFEST["parameters"]}
WINDOWS = "94bd395f-9b54-4693-94ae-4f3aa93fc239"
T0 = datetime(2016, 4, 12, 9, 14, 3, tzinfo=UTC)
KB = re.compile(r"^KB\d{6,8}$")

# every selection field, in each form a caller may give it (a list, a comma-separated string, a bool, …)
FORMS: dict[str, list[object]] = {
    "includeKbs": [["kb3045685", "KB3135998"], "KB3045685, KB3135998", [], ""],
    "excludeKbs": [["KB3146723"], "KB3146723", []],
    "classifications": [["Security Updates", "Critical Updates"], "Security Updates", []],
    "severities": [["critical", "Important"], "Critical,Important", []],
    "approveAfterDays": [7, "7", "", None, 0],
    "rebootPolicy": ["if_required", "never", "always"],
    "scanOnly": [True, False, "true", "false"],
    "updateService": ["WSUS", "windowsupdate", "MicrosoftUpdate", "Default", None, ""],
    "packageExclusions": [["kernel*"], []],
}


def test_the_forms_cover_every_selection_field() -> None:
    assert set(FORMS) == set(selection.FIELDS) == set(MANIFEST["selection"])


def every_run(policy: Policy = Policy()) -> list[dict[str, str]]:
    """What the engine sends, for each form of each field: the run built as Stepper.perform builds it from the
    machine's command (deadline, heartbeat), with the report channel and quarantined KBs."""
    sent: list[dict[str, str]] = []
    for name, forms in FORMS.items():
        for form in forms:
            view = ExecutionView(id="VA1-132457", server="VA1OSDPATCH01", state=State.INVOKING_PACKAGE, cycle=2,
                                 package_id=WINDOWS, parameters={name: form},
                                 quarantined={"KB3135998": "failed 2 times"})
            command = machine.command_for(view, T0, policy)
            assert isinstance(command, machine.InvokeUpdatePackage)
            run = PackageRun(package_id=WINDOWS, execution_id=view.id, cycle=command.cycle,
                             exclude_kbs=command.exclude_kbs, parameters=dict(view.parameters),
                             deadline=command.deadline, heartbeat_seconds=command.heartbeat_seconds,
                             report_url="https://patchaas.example/v2/patchaas/executions/VA1-132457/reports",
                             report_token=SecretStr("t0k3n"))
            sent.append(clc_wire.package_parameters(run, command.key))
    return sent


def valid(parameter: dict[str, Any], value: str) -> bool:
    """Whether the script reads `value` for `parameter`, by the manifest's format."""
    form = parameter["format"]
    if value == "":  # "" means not set
        return not parameter["required"]
    choices = {c.lower() for c in parameter.get("choices", [])}
    match form:
        case "kb list":
            return all(KB.match(kb) for kb in value.split(","))
        case "choice list":
            return all(item.lower() in choices for item in value.split(","))
        case "choice":
            return value.lower() in choices
        case "boolean":
            return value in ("true", "false")
        case "integer 0-365":
            return value.isdigit() and 0 <= int(value) <= 365
        case "integer 1-1000":
            return value.isdigit() and 1 <= int(value) <= 1000
        case "integer 0 or 30-3600":
            return value.isdigit() and (int(value) == 0 or 30 <= int(value) <= 3600)
        case "ISO-8601 UTC or epoch seconds":
            return bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value))
        case "https url" | "secret" | "execution id" | "<executionId>:package:<cycle>":
            return '"' not in value
    raise AssertionError(f"format {form!r} unknown to this test")


def test_every_parameter_the_engine_sends_is_bound_by_the_manifest_as_a_string_it_reads() -> None:
    for parameters in every_run():
        for name, value in parameters.items():
            assert name in BY_NAME, f"{name} is not a parameter of the manifest"
            assert isinstance(value, str) and '"' not in value, (name, value)  # CLC double-quotes each one
            assert valid(BY_NAME[name], value), (name, value)
        bound = [BY_NAME[name]["script"].lower() for name in parameters]
        assert len(bound) == len(set(bound)), "two parameters bind to one script parameter"
        for required in (p["name"] for p in MANIFEST["parameters"] if p["required"]):
            assert parameters.get(required), required


def test_lists_booleans_and_unset_values_are_strings() -> None:
    run = PackageRun(package_id=WINDOWS, execution_id="VA1-132457", cycle=1, parameters={
        "includeKbs": ["kb3045685", "KB3135998"], "scanOnly": True, "approveAfterDays": None,
        "classifications": "Security Updates, Critical Updates", "rebootPolicy": "never"})
    sent = clc_wire.package_parameters(run, "VA1-132457:package:1")
    assert sent["includeKbs"] == "KB3045685,KB3135998"  # as validated: upper-case, comma-separated
    assert sent["scanOnly"] == "true" and sent["approveAfterDays"] == ""
    assert sent["classifications"] == "Security Updates,Critical Updates" and sent["rebootPolicy"] == "never"
    assert clc_wire.wire_value(False) == "false" and clc_wire.wire_value(None) == "" and clc_wire.wire_value(7) == "7"
    assert clc_wire.wire_value(("a", "b")) == "a,b" and clc_wire.wire_value(selection.UpdateService.WSUS) == "WSUS"


def test_the_deadline_heartbeat_update_service_and_quarantine_are_sent() -> None:
    [sent] = every_run()[:1]
    assert sent[clc_wire.PARAM_DEADLINE] == "2016-04-12T10:14:03Z"  # now + the package timeout (60 min)
    assert sent[clc_wire.PARAM_HEARTBEAT_SECONDS] == "300"
    assert sent[clc_wire.PARAM_UPDATE_SERVICE] == "Default"
    assert sent[clc_wire.PARAM_EXCLUDE_KBS] == "KB3135998"  # the quarantined KB
    assert sent[clc_wire.PARAM_CYCLE] == "2" and sent[clc_wire.PARAM_IDEMPOTENCY_KEY] == "VA1-132457:package:2"
    short = every_run(Policy(package_timeout=timedelta(minutes=30), heartbeat_seconds=0))[0]
    assert short[clc_wire.PARAM_DEADLINE] == "2016-04-12T09:44:03Z" and short[clc_wire.PARAM_HEARTBEAT_SECONDS] == "0"


def test_the_update_service_is_sent_as_the_script_spells_it() -> None:
    for form, expected in (("wsus", "WSUS"), ("windowsupdate", "WindowsUpdate"), ("MicrosoftUpdate", "MicrosoftUpdate"),
                           (None, "Default"), ("", "Default")):
        run = PackageRun(package_id=WINDOWS, execution_id="VA1-132457", cycle=1, parameters={"updateService": form})
        sent = clc_wire.package_parameters(run, "VA1-132457:package:1")
        assert sent[clc_wire.PARAM_UPDATE_SERVICE] == expected and "updateService" not in sent
    with pytest.raises(ValueError, match="updateService: Value error, must be one of Default, WSUS"):
        selection.parse({"updateService": "Google"})


def test_a_refused_field_never_reaches_the_script() -> None:
    run = PackageRun(package_id=WINDOWS, execution_id="VA1-132457", cycle=1, parameters={"packageExclusions": []})
    assert "packageExclusions" not in clc_wire.package_parameters(run, "VA1-132457:package:1")


# --- B. request-time refusal, field by field, from the manifest ------------------------------------------


SAMPLES: dict[str, object] = {field: forms[0] for field, forms in FORMS.items()}


def test_the_refusals_are_the_manifests() -> None:
    refused = {field for field, entry in MANIFEST["selection"].items() if not entry["honoured"]}
    assert set(selection.REFUSED["windows"]) == refused
    for field in refused:
        assert MANIFEST["selection"][field]["reason"]


@pytest.mark.parametrize("field", sorted(selection.FIELDS))
def test_every_selection_field_is_honoured_or_refused_for_the_windows_package(field: str) -> None:
    package = packages.get(WINDOWS)
    entry = MANIFEST["selection"][field]
    if entry["honoured"]:
        selection.parse_for(package.family, {field: SAMPLES[field]}, package.describe())
        return
    with pytest.raises(ValueError) as refused:
        selection.parse_for(package.family, {field: SAMPLES[field]}, package.describe())
    assert str(refused.value) == (f"invalid package parameters: {field} is not supported by the Windows Update Scripts "
                                  f"package ({WINDOWS}): {selection.REFUSED['windows'][field]}")
    selection.parse_for(package.family, {field: []}, package.describe())  # unset is no request


@pytest.mark.parametrize("field", sorted(selection.REFUSED["windows"]))
def test_what_windows_refuses_linux_honours(field: str) -> None:
    for package_id in (packages.YUM_UPDATE, packages.APT_UPDATE):
        package = packages.get(package_id)
        assert package.family == "linux"
        selection.parse_for(package.family, {field: SAMPLES[field]}, package.describe())


def test_the_windows_only_update_service_is_refused_for_linux() -> None:
    package = packages.get(packages.YUM_UPDATE)
    with pytest.raises(ValueError, match="updateService is not supported by the Yum Update package"):
        selection.parse_for(package.family, {"updateService": "WSUS"}, package.describe())
