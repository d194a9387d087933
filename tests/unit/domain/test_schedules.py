"""Patch-window schedules (pure): the monthly rule across months, time zones and DST changes, cron
occurrences, which occurrence is open, and the validation messages."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from orchestrator.domain.schedules import (
    CronRule,
    MonthlyRule,
    ScheduleError,
    format_duration,
    next_occurrences,
    occurrences,
    open_occurrence,
    parse_cron,
    parse_duration,
    parse_monthly,
    parse_schedule,
    zone,
)
from orchestrator.services.window_specs import WindowSpec, validate
from orchestrator.settings import DEFAULT_PACKAGE_ID

BERLIN = zone("Europe/Berlin")
NEW_YORK = zone("America/New_York")
TOKYO = zone("Asia/Tokyo")
YEAR = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
PATCH_FRIDAY = parse_monthly("second Tuesday + 3 days at 22:00")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- the monthly rule --------------------------------------------------------------------------------


def test_the_rule_reads_as_people_write_it() -> None:
    assert PATCH_FRIDAY == MonthlyRule(nth=2, weekday=1, offset_days=3, at=time(22, 0))
    assert str(PATCH_FRIDAY) == "second Tuesday + 3 days at 22:00"
    assert parse_monthly("2nd tue +3 days 22:00") == PATCH_FRIDAY
    assert parse_monthly("last fri - 1 day at 06:30") == MonthlyRule(-1, 4, -1, time(6, 30))
    assert str(parse_monthly("first Monday")) == "first Monday at 00:00"
    assert parse_monthly(str(parse_monthly("last Sunday - 2 days at 23:59"))) == MonthlyRule(-1, 6, -2, time(23, 59))


def test_second_tuesday_plus_three_days_every_month_of_2026() -> None:
    days = [s.astimezone(BERLIN).date().isoformat() for s in occurrences(PATCH_FRIDAY, BERLIN, *YEAR)]
    assert days == ["2026-01-16", "2026-02-13", "2026-03-13", "2026-04-17", "2026-05-15", "2026-06-12",
                    "2026-07-17", "2026-08-14", "2026-09-11", "2026-10-16", "2026-11-13", "2026-12-11"]
    assert all(s.astimezone(BERLIN).weekday() == 4 for s in occurrences(PATCH_FRIDAY, BERLIN, *YEAR))


def test_the_local_time_holds_across_dst_changes() -> None:
    starts = occurrences(PATCH_FRIDAY, BERLIN, *YEAR)
    assert {s.astimezone(BERLIN).time() for s in starts} == {time(22, 0)}
    assert starts[2] == utc(2026, 3, 13, 21, 0)  # CET, UTC+1
    assert starts[3] == utc(2026, 4, 17, 20, 0)  # CEST, UTC+2
    assert starts[10] == utc(2026, 11, 13, 21, 0)  # CET again


def test_the_same_rule_in_other_time_zones() -> None:
    new_york = occurrences(PATCH_FRIDAY, NEW_YORK, utc(2026, 11, 1), utc(2026, 12, 1))
    assert new_york == [utc(2026, 11, 14, 3, 0)]  # Friday 22:00 EST is Saturday 03:00 UTC
    tokyo = occurrences(PATCH_FRIDAY, TOKYO, utc(2026, 11, 1), utc(2026, 12, 1))
    assert tokyo == [utc(2026, 11, 13, 13, 0)]  # no DST in Tokyo: UTC+9


def test_offsets_carry_into_the_next_or_previous_month() -> None:
    after_last_friday = parse_monthly("last Friday + 7 days at 01:00")
    starts = occurrences(after_last_friday, zone("UTC"), utc(2026, 1, 1), utc(2026, 3, 1))
    assert starts == [utc(2026, 1, 2, 1, 0), utc(2026, 2, 6, 1, 0)]  # Dec 26 + 7, Jan 30 + 7
    before_first_monday = parse_monthly("first Monday - 3 days at 12:00")
    starts = occurrences(before_first_monday, zone("UTC"), utc(2026, 6, 1), utc(2026, 8, 1))
    assert starts == [utc(2026, 7, 3, 12, 0), utc(2026, 7, 31, 12, 0)]  # Jul 6 - 3, Aug 3 - 3 (Jun 1 - 3: May)


def test_a_fifth_weekday_only_in_months_that_have_one() -> None:
    starts = occurrences(parse_monthly("fifth Thursday at 08:00"), zone("UTC"), *YEAR)
    assert [s.month for s in starts] == [1, 4, 7, 10, 12]


def test_a_local_time_in_the_spring_gap_runs_an_hour_later_and_a_repeated_one_once() -> None:
    gap = parse_monthly("last Saturday + 1 day at 02:30")  # 2026-03-29: Berlin skips 02:00-03:00
    [start] = occurrences(gap, BERLIN, utc(2026, 3, 15), utc(2026, 4, 1))
    assert start == utc(2026, 3, 29, 1, 30) and start.astimezone(BERLIN).hour == 3
    repeated = parse_monthly("last Sunday at 02:30")  # 2026-10-25: Berlin has 02:30 twice
    [start] = occurrences(repeated, BERLIN, utc(2026, 10, 1), utc(2026, 11, 1))
    assert start == utc(2026, 10, 25, 0, 30)  # the first 02:30 (summer time)


@pytest.mark.parametrize("text,message", [
    ("sometimes Tuesday", "'sometimes' is not one of"), ("second Caturday", "not a weekday"),
    ("second Tuesday + 40 days", "within 27 days"), ("second Tuesday at 25:00", "not a time of day"),
    ("Tuesday", "write it like"), ("", "write it like"),
])
def test_bad_monthly_rules_say_why(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match="bad monthly rule") as info:
        parse_monthly(text)
    assert message in str(info.value)


# --- cron --------------------------------------------------------------------------------------------


def test_cron_occurrences_in_the_window_zone() -> None:
    tuesdays = occurrences(parse_cron("0 22 * * 2"), BERLIN, utc(2026, 11, 1), utc(2026, 12, 1))
    assert [s.astimezone(BERLIN).day for s in tuesdays] == [3, 10, 17, 24]
    assert tuesdays[0] == utc(2026, 11, 3, 21, 0)


def test_cron_runs_once_in_the_repeated_hour_and_once_on_the_day_of_the_gap() -> None:
    nightly = parse_cron("30 2 * * *")
    fall = occurrences(nightly, BERLIN, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    assert fall == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    spring = occurrences(nightly, BERLIN, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    assert len(spring) == 2 and spring[0].date().isoformat() == "2026-03-29"


def test_occurrence_bounds_are_after_exclusive_until_inclusive() -> None:
    hourly = parse_cron("0 * * * *")
    assert occurrences(hourly, zone("UTC"), utc(2026, 1, 1, 0), utc(2026, 1, 1, 2)) == [utc(2026, 1, 1, 1),
                                                                                        utc(2026, 1, 1, 2)]


@pytest.mark.parametrize("text", ["61 * * * *", "0 0 * *", "0 0 * * * *", "every day", "* * 31 2 *x"])
def test_bad_cron_is_refused_with_a_message(text: str) -> None:
    with pytest.raises(ScheduleError, match="bad cron expression"):
        parse_cron(text)


def test_exactly_one_schedule() -> None:
    assert isinstance(parse_schedule("0 22 * * 5", None), CronRule)
    assert isinstance(parse_schedule(None, "first Monday"), MonthlyRule)
    for cron, monthly in ((None, None), ("0 22 * * 5", "first Monday"), ("  ", "")):
        with pytest.raises(ScheduleError, match="exactly one schedule"):
            parse_schedule(cron, monthly)


def test_next_occurrences() -> None:
    assert next_occurrences(PATCH_FRIDAY, BERLIN, utc(2026, 11, 13, 21, 0), 2) == [utc(2026, 12, 11, 21, 0),
                                                                                   utc(2027, 1, 15, 21, 0)]


# --- which occurrence is open ------------------------------------------------------------------------


def test_an_occurrence_is_open_from_its_start_until_end_minus_cutoff() -> None:
    four, half = timedelta(hours=4), timedelta(minutes=30)
    start = utc(2026, 11, 13, 21, 0)
    assert open_occurrence(PATCH_FRIDAY, BERLIN, four, half, start - timedelta(seconds=1)) is None
    assert open_occurrence(PATCH_FRIDAY, BERLIN, four, half, start) == start
    assert open_occurrence(PATCH_FRIDAY, BERLIN, four, half, start + timedelta(hours=3, minutes=29)) == start
    assert open_occurrence(PATCH_FRIDAY, BERLIN, four, half, start + timedelta(hours=3, minutes=30)) is None
    assert open_occurrence(PATCH_FRIDAY, BERLIN, four, half, start + timedelta(hours=1),
                           not_before=start + timedelta(minutes=5)) is None


def test_an_every_minute_window_of_a_week_opens_the_current_minute() -> None:
    now = utc(2026, 1, 8, 5, 10, 30)
    assert open_occurrence(parse_cron("* * * * *"), zone("UTC"), timedelta(days=7), timedelta(0), now) == utc(
        2026, 1, 8, 5, 10)


def test_the_repeated_fall_back_hour_does_not_open_a_second_occurrence() -> None:
    nightly, three_hours = parse_cron("30 2 * * *"), timedelta(hours=3)
    first = open_occurrence(nightly, BERLIN, three_hours, timedelta(0), utc(2026, 10, 25, 0, 45))
    second = open_occurrence(nightly, BERLIN, three_hours, timedelta(0), utc(2026, 10, 25, 1, 45))
    assert first == second == utc(2026, 10, 25, 0, 30)


def test_overlapping_occurrences_open_the_latest() -> None:
    hourly = parse_cron("0 * * * *")
    now = utc(2026, 1, 1, 5, 10)
    assert open_occurrence(hourly, zone("UTC"), timedelta(hours=3), timedelta(0), now) == utc(2026, 1, 1, 5)


# --- validation ----------------------------------------------------------------------------------------


def spec(**overrides: object) -> WindowSpec:
    values: dict[str, object] = {"name": "patch-friday", "groups": ["va1-0001"],
                                 "monthly": "second Tuesday + 3 days at 22:00", "timezone": "Europe/Berlin",
                                 "duration": "4h", "cutoff": "30m"}
    values.update(overrides)
    return WindowSpec(**values)  # type: ignore[arg-type]


def test_a_valid_window() -> None:
    valid = validate(spec(max_concurrency="10%", max_errors=2, waves=[["va1-0002"]], servers=["va1osdpatch01"]),
                     DEFAULT_PACKAGE_ID)
    assert valid.duration == timedelta(hours=4) and valid.cutoff == timedelta(minutes=30)
    assert valid.servers == ("VA1OSDPATCH01",) and valid.groups == ("va1-0001",)
    assert valid.tz.key == "Europe/Berlin" and valid.package_id == DEFAULT_PACKAGE_ID
    assert str(valid.rate.max_concurrency) == "10%"


@pytest.mark.parametrize("overrides,message", [
    ({"cutoff": "4h"}, "the cutoff (4h) must be shorter than the duration (4h)"),
    ({"cutoff": "5h"}, "must be shorter than the duration"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"timezone": "../etc/passwd"}, "unknown time zone"),
    ({"monthly": None, "cron": "0 25 * * *"}, "bad cron expression"),
    ({"monthly": None}, "exactly one schedule"),
    ({"groups": []}, "a window needs targets"),
    ({"groups": ["nope"]}, "must look like va1-0001"),
    ({"duration": "forever"}, "bad duration 'forever'"),
    ({"duration": "8d"}, "must be between 1m and"),
    ({"name": ""}, "bad window name"),
    ({"max_concurrency": "0"}, "maxConcurrency must be at least 1"),
    ({"max_errors": "x"}, "maxErrors must be a count"),
    ({"waves": [["va1-0002"], ["nope"]]}, "wave 2: 'nope' is neither a group id"),
    ({"package_id": "nope"}, "nope"),
])
def test_bad_windows_are_refused_with_clear_messages(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        validate(spec(**overrides), DEFAULT_PACKAGE_ID)
    assert message in str(info.value)


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90) == parse_duration("90") == parse_duration(90)
    assert parse_duration("2d") == timedelta(days=2)
    assert format_duration(timedelta(minutes=90)) == "1h30m" and format_duration(timedelta(hours=4)) == "4h"
    assert format_duration(timedelta(minutes=30)) == "30m"
