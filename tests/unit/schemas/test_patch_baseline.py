"""The patch-baseline rules of a run's selection (AWS Patch Manager's auto-approval delay and severities):
validation, `PatchSelection.admits`, the simulated catalog's release ages and severities, and the simulated
package applying both rules by the fleet's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import selection
from schemas.fleet import PackageRun
from schemas.selection import MsrcSeverity, PatchSelection
from simulation.catalog import (
    DAY,
    MSRC_SEVERITIES,
    WINDOWS_2012_UPDATES,
    WINDOWS_2012R2,
    WINDOWS_2012R2_UPDATES,
    CatalogUpdate,
    Classification,
    kb_url,
)
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.records import EffectKind
from simulation.specs import SimServerSpec
from simulation.store import MemoryStore
from tests.support import FakeClock

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
SECURITY = "Security Updates"


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    (0, 0), (7, 7), (365, 365), ("14", 14), (" 30 ", 30), (None, None), ("", None),
])
def test_approve_after_days_takes_whole_days_from_0_to_365(value: object, expected: int | None) -> None:
    assert selection.parse({"approveAfterDays": value}).approve_after_days == expected


@pytest.mark.parametrize("value", [-1, 366, 1.5, "7d", "-3", "400", True, [7]])
def test_approve_after_days_out_of_range_or_not_a_number_is_refused_with_the_rule(value: object) -> None:
    with pytest.raises(ValueError) as raised:
        selection.parse({"approveAfterDays": value})
    assert str(raised.value) == (
        f"invalid package parameters: approveAfterDays: Value error, "
        f"must be a whole number of days from 0 to 365, not {value!r}"
    )


def test_severities_take_a_list_or_a_comma_string_in_any_case() -> None:
    assert selection.parse({"severities": "critical, Important"}).severities == (
        MsrcSeverity.CRITICAL, MsrcSeverity.IMPORTANT)
    assert selection.parse({"severities": ["Low", "Unspecified", "low"]}).severities == (
        MsrcSeverity.LOW, MsrcSeverity.UNSPECIFIED)
    assert selection.parse({"severities": ""}).severities == ()


def test_unknown_severities_are_refused_naming_them_and_the_known_ones() -> None:
    with pytest.raises(ValueError) as raised:
        selection.parse({"severities": "Critical,Urgent,Severe"})
    assert str(raised.value) == (
        "invalid package parameters: severities: Value error, not MSRC severities "
        "(Critical, Important, Moderate, Low, Unspecified): 'Urgent', 'Severe'"
    )


def test_the_two_rules_are_selection_fields_that_reach_the_package() -> None:
    chosen = selection.selection_of({"approveAfterDays": 7, "severities": "Critical", "other": 1})
    assert chosen.approve_after_days == 7 and chosen.severities == (MsrcSeverity.CRITICAL,)
    assert {"approveAfterDays", "severities"} <= selection.FIELDS


def test_severity_of_reads_wuas_msrc_severity() -> None:
    assert selection.severity_of("") is MsrcSeverity.UNSPECIFIED
    assert selection.severity_of(None) is MsrcSeverity.UNSPECIFIED
    assert selection.severity_of("Critical") is MsrcSeverity.CRITICAL
    with pytest.raises(ValueError, match="not an MSRC severity"):
        selection.severity_of("Urgent")


# --- admits -----------------------------------------------------------------------------------

DELAY_7 = PatchSelection.model_validate({"approveAfterDays": 7})
CRITICAL_ONLY = PatchSelection.model_validate({"severities": ["Critical"]})


@pytest.mark.parametrize("released,admitted", [
    (ago(30), True),
    (ago(7), True),  # exactly the delay: released at least 7 days before
    (ago(7) + timedelta(seconds=1), False),  # one second short of it
    (ago(6.9), False),
    (NOW, False),
    (NOW + timedelta(days=1), False),  # a date in the future is not old enough either
    (None, False),  # no release date: never auto-approved
])
def test_approve_after_days_counts_from_the_search(released: datetime | None, admitted: bool) -> None:
    assert DELAY_7.admits("KB3045685", SECURITY, released, "Critical", NOW) is admitted


def test_approve_after_days_zero_admits_anything_already_released() -> None:
    no_delay = PatchSelection.model_validate({"approveAfterDays": 0})
    assert no_delay.admits("KB3045685", SECURITY, NOW, "", NOW)
    assert not no_delay.admits("KB3045685", SECURITY, NOW + timedelta(seconds=1), "", NOW)


def test_approve_after_days_needs_the_moment_of_the_search() -> None:
    with pytest.raises(ValueError, match="now"):
        DELAY_7.admits("KB3045685", SECURITY, ago(30), "Critical")


@pytest.mark.parametrize("severity,admitted", [
    ("Critical", True), ("Important", False), ("Moderate", False), ("Low", False), ("", False), (None, False),
])
def test_severities_admit_only_those(severity: str | None, admitted: bool) -> None:
    assert CRITICAL_ONLY.admits("KB3045685", SECURITY, ago(1), severity, NOW) is admitted


def test_unspecified_is_the_severity_of_updates_wua_gives_none() -> None:
    unspecified = PatchSelection.model_validate({"severities": "Unspecified"})
    assert unspecified.admits("KB2919355", "Updates", ago(1), "", NOW)
    assert unspecified.admits("KB2919355", "Updates", ago(1), None, NOW)
    assert not unspecified.admits("KB3045685", SECURITY, ago(1), "Critical", NOW)


def test_without_the_rules_release_date_and_severity_do_not_matter() -> None:
    everything = PatchSelection()
    assert everything.admits("KB3045685", SECURITY)  # the old two-argument call still works
    assert everything.admits("KB3045685", SECURITY, NOW, "Low", NOW)
    assert everything.admits("KB3045685", SECURITY, None, None, None)


BASELINE = {"approveAfterDays": 7, "severities": "Critical,Important", "classifications": SECURITY}


@pytest.mark.parametrize("parameters,kb,classification,days_old,severity,admitted", [
    # the rules together: every one must hold
    (BASELINE, "KB3045685", SECURITY, 10, "Critical", True),
    (BASELINE, "KB3045685", SECURITY, 3, "Critical", False),  # too young
    (BASELINE, "KB3045685", SECURITY, 10, "Low", False),  # wrong severity
    (BASELINE, "KB3045685", "Updates", 10, "Critical", False),  # wrong classification
    ({**BASELINE, "excludeKbs": "KB3045685"}, "KB3045685", SECURITY, 10, "Critical", False),
    # includeKbs: an approved patch, whatever its age and severity (AWS "approved patches")...
    ({**BASELINE, "includeKbs": "KB3045685"}, "KB3045685", SECURITY, 0, "Low", True),
    ({**BASELINE, "includeKbs": "KB3045685"}, "KB3045685", SECURITY, 0, "", True),
    # ...but not what is not listed, nor what excludeKbs rejects, nor another classification (as before)
    ({**BASELINE, "includeKbs": "KB3045685"}, "KB3035126", SECURITY, 100, "Critical", False),
    ({**BASELINE, "includeKbs": "KB3045685", "excludeKbs": "KB3045685"}, "KB3045685", SECURITY, 100, "Critical",
     False),
    ({**BASELINE, "includeKbs": "KB3045685"}, "KB3045685", "Updates", 100, "Critical", False),
    # the rules alone
    ({"approveAfterDays": 7}, "KB2919355", "Updates", 8, "", True),
    ({"severities": "Unspecified"}, "KB2919355", "Updates", 0, "", True),
])
def test_admits_truth_table(parameters: dict[str, object], kb: str, classification: str, days_old: float,
                            severity: str, admitted: bool) -> None:  # fmt: skip
    chosen = selection.parse(parameters)
    assert chosen.admits(kb, classification, ago(days_old), severity, NOW) is admitted


# --- the simulated catalog ----------------------------------------------------------------------

CATALOG = WINDOWS_2012_UPDATES + WINDOWS_2012R2_UPDATES


def test_the_catalog_gives_every_update_a_release_age_and_an_msrc_severity() -> None:
    assert all(u.msrc_severity in MSRC_SEVERITIES for u in CATALOG)
    non_security = [u for u in CATALOG if u.classification is not Classification.SECURITY]
    assert non_security and all(u.msrc_severity == "" for u in non_security)
    security = {u.msrc_severity for u in CATALOG if u.classification is Classification.SECURITY}
    assert security == {"Critical", "Important", "Moderate", "Low"}
    ages = [u.age_days for u in CATALOG]
    assert min(ages) >= 1 and any(age < 7 for age in ages) and any(age > 90 for age in ages)


def test_later_waves_were_released_later() -> None:
    for catalog in (WINDOWS_2012_UPDATES, WINDOWS_2012R2_UPDATES):
        for earlier, later in zip(catalog, catalog[1:], strict=False):
            if later.wave > earlier.wave:
                assert max(u.age_days for u in catalog if u.wave == later.wave) < min(
                    u.age_days for u in catalog if u.wave == earlier.wave)


def test_a_catalog_update_refuses_a_bad_age_or_severity() -> None:
    with pytest.raises(ValueError, match="negative"):
        CatalogUpdate("KB3045685", "t", "u", Classification.SECURITY, 0, 1, -1.0, "Critical")
    with pytest.raises(ValueError, match="MSRC severity"):
        CatalogUpdate("KB3045685", "t", "u", Classification.SECURITY, 0, 1, 1.0, "Urgent")


# --- the simulated package ------------------------------------------------------------------------


def _update(kb: str, wave: int, age: float, severity: str, classification: str = SECURITY) -> CatalogUpdate:
    return CatalogUpdate(kb, f"Update ({kb})", kb_url(kb), Classification(classification), wave, 0, age, severity)


UPDATES = (
    _update("KB3045685", 0, 120, "Critical"),
    _update("KB3035126", 0, 30, "Important"),
    _update("KB3138615", 0, 200, "", "Critical Updates"),
    _update("KB3185331", 0, 5, "Critical"),
    _update("KB3142045", 0, 2, "Low"),
)
SERVER = "VA1OSDPATCH01"


def _fleet(clock: FakeClock) -> SimulatedFleet:
    spec = SimServerSpec(SERVER, WINDOWS_2012R2, updates=UPDATES)
    return SimulatedFleet.create([spec], MemoryStore(), SimTimings.instant(), clock=clock.seconds)


def _cycle(fleet: SimulatedFleet, n: int, parameters: dict[str, object]) -> tuple[set[str], set[str]]:
    key = f"exec-{n}:package:1"
    run = PackageRun(package_id="pkg", execution_id=f"exec-{n}", cycle=1, parameters=parameters)
    fleet.invoke_package(SERVER, key, run)
    report = fleet.cycle_result(SERVER, key)
    assert report is not None
    installed = {e.kb for e in fleet.effects(SERVER, EffectKind.INSTALL) if e.key == key}
    assert {u.kb for u in report.updates} == installed  # what is not admitted is not reported as offered
    return installed, set(report.excluded)


def test_the_simulated_package_waits_the_approval_delay_by_the_fleets_clock() -> None:
    clock = FakeClock()
    fleet = _fleet(clock)
    installed, excluded = _cycle(fleet, 1, {"approveAfterDays": 7})
    assert installed == {"KB3045685", "KB3035126", "KB3138615"} and excluded == {"KB3185331", "KB3142045"}
    clock.advance(2 * DAY - 1)  # KB3185331 is now one second short of 7 days old
    assert _cycle(fleet, 2, {"approveAfterDays": 7}) == (set(), {"KB3185331", "KB3142045"})
    clock.advance(1)
    assert _cycle(fleet, 3, {"approveAfterDays": 7}) == ({"KB3185331"}, {"KB3142045"})
    clock.advance(3 * DAY)
    assert _cycle(fleet, 4, {"approveAfterDays": 7}) == ({"KB3142045"}, set())


def test_the_simulated_package_installs_only_the_chosen_severities() -> None:
    fleet = _fleet(FakeClock())
    installed, excluded = _cycle(fleet, 1, {"severities": "Critical,Unspecified"})
    assert installed == {"KB3045685", "KB3138615", "KB3185331"} and excluded == {"KB3035126", "KB3142045"}


def test_the_simulated_package_installs_an_included_kb_whatever_its_age_and_severity() -> None:
    fleet = _fleet(FakeClock())
    parameters = {"approveAfterDays": 7, "severities": "Critical", "includeKbs": "KB3142045,KB3035126,KB3185331"}
    installed, excluded = _cycle(fleet, 1, parameters)
    assert installed == {"KB3142045", "KB3035126", "KB3185331"}
    assert excluded == {"KB3045685", "KB3138615"}


def test_release_dates_count_back_from_when_the_fleet_was_created() -> None:
    clock = FakeClock()
    created = clock.seconds()
    fleet = _fleet(clock)
    assert UPDATES[2].released_at(created) == created - 200 * DAY
    clock.advance(200 * DAY)  # ages now 320, 230, 400, 205 and 202 days
    installed, _ = _cycle(fleet, 1, {"approveAfterDays": 365})
    assert installed == {"KB3138615"}
