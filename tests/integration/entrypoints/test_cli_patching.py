"""`patchaas execute` with the patch selection of the REST body, and `history`, `detail`, `compliance` with
`--format table|json|csv`, through typer's CliRunner on the real PostgreSQL. The runs the CLI queues are driven
by the `world` fixture's engine (synchronously, its clock moved to now)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from orchestrator.entrypoints.cli.main import app as cli_app
from tests.integration.entrypoints.test_rest_api import PACKAGE, World, server, world  # noqa: F401


@pytest.fixture
def cli(world: World, pg: str):  # type: ignore[no-untyped-def]  # noqa: F811
    world.clock.now = datetime.now(UTC)  # the CLI's process clock and the engine's agree
    runner = CliRunner()
    env = {"PATCHAAS_DATABASE_URL": pg, "PATCHAAS_BROKER_URL": "memory://localhost/"}

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli_app, list(args), env=env)

    return run


def queued_ids(output: str) -> list[str]:
    return re.findall(r"queued as ([A-Z]{2}\d-\d{6})", output)


def test_a_scan_only_run_with_kb_exclusions_from_the_command_line(world: World, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    done = cli("execute", "--alias", "OSD", "--server", server(1), "--scan-only", "--exclude-kb", "KB3102467",
               "--exclude-kb", "KB2919442,KB3045685", "--classification", "Security Updates",
               "--classification", "Servicing Stack Updates")
    assert done.exit_code == 0, done.output
    (execution_id,) = queued_ids(done.output)
    assert 'package parameters: {"excludeKbs": "KB3102467,KB2919442,KB3045685"' in done.output
    world.drive()
    detail = world.container.service.detail("OSD", server(1), execution_id)
    assert detail.status == "completed" and detail.cycles == 1  # a scan: one cycle, nothing installed
    assert detail.patches and all(p.status == "pending" for p in detail.patches)
    kbs = {p.kb for p in detail.patches}
    assert not kbs & {"KB3102467", "KB2919442", "KB3045685"}
    assert {p.classification for p in detail.patches} <= {"Security Updates", "Servicing Stack Updates"}
    assert detail.installed_count == 0
    with world.container.sessions() as session:
        from orchestrator.persistence import models

        row = session.get(models.Execution, execution_id)
        assert row is not None and row.parameters["scanOnly"] is True


@pytest.mark.parametrize("args,words", [
    (["--include-kb", "KB12"], "invalid package parameters: includeKbs: Value error, not KB numbers"),
    (["--severity", "Dire"], "not MSRC severities"),
    (["--approve-after-days", "400"], "must be a whole number of days from 0 to 365, not '400'"),
    (["--reboot-policy", "sometimes"], "rebootPolicy"),
    (["--package-exclusion", "rm -rf"], "not safe package globs"),
    (["--parameters-json", "[1]"], "--parameters-json must be a JSON object"),
    (["--parameters-json", "{nope"], "--parameters-json is not JSON"),
    (["--parameters-json", '{"colour": "blue"}'], "colour: Extra inputs are not permitted"),
    (["--package", "nope"], "unknown package 'nope'"),
])
def test_bad_selection_options_exit_2_with_the_rest_message(world: World, cli, args: list[str], words: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    done = cli("execute", "--alias", "OSD", "--server", server(1), *args)
    assert done.exit_code == 2, done.output
    assert words in " ".join(done.output.split()), done.output
    assert not world.dispatcher.steps and not queued_ids(done.output)
    if args[0] != "--package":  # the REST answer says the same
        parameters = {"--include-kb": {"includeKbs": "KB12"}, "--severity": {"severities": "Dire"},
                      "--approve-after-days": {"approveAfterDays": "400"},
                      "--reboot-policy": {"rebootPolicy": "sometimes"},
                      "--package-exclusion": {"packageExclusions": "rm -rf"}}.get(args[0])
        if parameters is not None:
            rest = world.client.post("/v2/operations/osd/servers/executePackage", headers=world.login(),
                                     json={"servers": [server(1)], "package": {**PACKAGE, "parameters": parameters}})
            assert rest.status_code == 400 and rest.json()["message"] in " ".join(done.output.split())


def test_parameters_json_and_options_together(world: World, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    done = cli("execute", "--alias", "OSD", "--group", "va1-0002", "--parameters-json",
               '{"rebootPolicy": "never", "excludeKbs": "KB1111111"}', "--exclude-kb", "KB3102467",
               "--approve-after-days", "0", "--severity", "Critical", "--severity", "Unspecified")
    assert done.exit_code == 0, done.output
    ids = queued_ids(done.output)
    assert len(ids) == 3
    with world.container.sessions() as session:
        from orchestrator.persistence import models

        row = session.get(models.Execution, ids[0])
        assert row is not None
        assert row.parameters == {"rebootPolicy": "never", "excludeKbs": "KB3102467", "approveAfterDays": "0",
                                  "severities": "Critical,Unspecified"}


def test_history_detail_and_compliance_in_three_formats(world: World, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ids = []
    for _ in range(2):
        done = cli("execute", "--alias", "OSD", "--server", server(4))
        ids += queued_ids(done.output)
        world.drive()
    table = cli("history", "OSD", server(4))
    assert table.exit_code == 0 and f"{server(4)} patch history" in table.output and ids[0] in table.output
    as_json = json.loads(cli("history", "OSD", server(4), "--format", "json").output)
    assert [e["execution_id"] for e in as_json] == ids[::-1]
    assert json.loads(cli("history", "OSD", server(4), "--json").output) == as_json
    rows = list(csv.DictReader(io.StringIO(cli("history", "OSD", server(4), "--format", "csv").output)))
    assert [r["execution_id"] for r in rows] == ids[::-1] and rows[0]["status"] == "failed"
    detail = json.loads(cli("detail", "OSD", server(4), ids[0]).output)  # JSON stays the default
    assert detail["execution_id"] == ids[0]
    patches = list(csv.DictReader(io.StringIO(cli("detail", "OSD", server(4), ids[0], "--format", "csv").output)))
    assert [(p["kb"], p["hresult"]) for p in patches] == [(p["kb"], p["hresult"]) for p in detail["patches"]]
    assert any(p["hresult_text"].startswith("ERROR_INSTALL_FAILURE") for p in patches)
    shown = cli("detail", "OSD", server(4), ids[0], "--format", "table")
    assert shown.exit_code == 0 and "ERROR_INSTALL_FAILURE" in shown.output and "failed" in shown.output
    compliance = cli("compliance", "--alias", "OSD", "--format", "csv")
    assert compliance.exit_code == 3  # not every server is compliant: the exit code says so in every format
    by_server = {r["server"]: r for r in csv.DictReader(io.StringIO(compliance.output))}
    assert by_server[server(4)]["status"] == "non_compliant" and by_server[server(1)]["status"] == "unknown"
    assert json.loads(cli("compliance", "--alias", "OSD", "--format", "json").output)["counts"]["non_compliant"] == 1
    bad = cli("history", "OSD", server(4), "--format", "xml")
    assert bad.exit_code == 2 and "--format must be one of table, json, csv" in bad.output
