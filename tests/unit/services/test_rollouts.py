"""The rollout gate's pure parts: limits as counts and percentages, wave assignment, and every decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import machine
from orchestrator.domain.rate_control import (
    Limit,
    RateControl,
    assign_waves,
    concurrency_limit,
    error_limit,
    parse_limit,
)
from orchestrator.services.rollouts import Member, MemberStatus, RolloutState, decide, member_status
from schemas.fleet import PowerState, ServerStatus, SettleStatus

NOW = datetime(2026, 11, 13, 21, 0, tzinfo=UTC)
H, R, C, F, X = (MemberStatus.HELD, MemberStatus.RUNNING, MemberStatus.COMPLETED, MemberStatus.FAILED,
                 MemberStatus.CANCELLED)


def members(*statuses: MemberStatus, wave: int = 0, start: int = 0) -> list[Member]:
    return [Member(f"E{start + i:02d}", start + i, wave, s) for i, s in enumerate(statuses)]


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [("5", Limit(5)), (5, Limit(5)), ("10%", Limit(10, True)),
                                          (" 25 % ", Limit(25, True)), ("100%", Limit(100, True))])
def test_limits_parse_as_counts_or_percentages(raw: object, expected: Limit) -> None:
    assert parse_limit(raw, "maxConcurrency", minimum=1) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("raw,message", [("0", "at least 1"), ("0%", "between 1% and 100%"),
                                         ("101%", "between 1% and 100%"), ("ten", "a count (5) or a percentage"),
                                         ("5.5", "a count"), ("-1", "a count"), (True, "a count")])
def test_bad_concurrency_is_refused_with_a_message(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match="maxConcurrency") as info:
        parse_limit(raw, "maxConcurrency", minimum=1)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_zero_errors_is_a_valid_threshold_and_none_is_no_limit() -> None:
    assert parse_limit("0", "maxErrors") == Limit(0)
    assert parse_limit(None, "maxErrors") is None and parse_limit("  ", "maxErrors") is None


@pytest.mark.parametrize("limit,total,expected", [
    (None, 50, 50), (Limit(5), 50, 5), (Limit(10, True), 50, 5), (Limit(10, True), 51, 6),
    (Limit(1, True), 3, 1), (Limit(100, True), 7, 7), (Limit(5), 0, 5), (None, 0, 1),
])
def test_concurrency_percentages_round_up_to_at_least_one(limit: Limit | None, total: int, expected: int) -> None:
    assert concurrency_limit(limit, total) == expected


@pytest.mark.parametrize("limit,total,expected", [
    (None, 50, None), (Limit(2), 50, 2), (Limit(0), 50, 0), (Limit(10, True), 50, 5), (Limit(10, True), 59, 5),
    (Limit(5, True), 10, 0),
])
def test_error_percentages_round_down(limit: Limit | None, total: int, expected: int | None) -> None:
    assert error_limit(limit, total) == expected


def test_rate_control_parses_waves_from_lists_or_comma_text() -> None:
    rate = RateControl.parse("10%", 2, [["va1-0002"], "VA1OSDPATCH01, va1-0003"])
    assert rate.max_concurrency == Limit(10, True) and rate.max_errors == Limit(2)
    assert rate.waves == (("va1-0002",), ("VA1OSDPATCH01", "va1-0003"))
    assert not rate.empty and RateControl().empty
    with pytest.raises(ValueError, match="wave 2 is empty"):
        RateControl.parse(None, None, [["va1-0002"], []])


def test_waves_take_the_first_wave_naming_a_server_and_the_rest_run_last() -> None:
    names = ["A", "B", "C", "D"]
    assert assign_waves(names, [{"C"}, {"C", "A"}]) == {"A": 1, "B": 2, "C": 0, "D": 2}
    assert assign_waves(names, []) == dict.fromkeys(names, 0)


# --- the gate's decisions ------------------------------------------------------------------------


def test_releases_up_to_the_concurrency_in_position_order() -> None:
    decision = decide(members(*[H] * 10), concurrency=3, errors=None, now=NOW)
    assert decision.release == ("E00", "E01", "E02") and decision.skip == ()
    assert decision.state is RolloutState.RUNNING and not decision.ended and decision.running == 3


def test_only_free_slots_are_filled() -> None:
    decision = decide(members(C, R, R, F, H, H, H), concurrency=3, errors=None, now=NOW)
    assert decision.release == ("E04",)
    full = decide(members(R, R, R, H), concurrency=3, errors=None, now=NOW)
    assert full.release == () and full.running == 3


def test_failures_up_to_the_threshold_do_not_stop_the_rollout() -> None:
    decision = decide(members(F, F, R, H, H), concurrency=2, errors=2, now=NOW)
    assert decision.release == ("E03",) and decision.reason is None


def test_crossing_the_error_threshold_skips_every_held_execution_and_lets_running_ones_finish() -> None:
    decision = decide(members(F, F, F, R, R, *[H] * 45), concurrency=5, errors=2, now=NOW)
    assert decision.release == ()
    assert len(decision.skip) == 45 and "E00" not in decision.skip and "E03" not in decision.skip
    assert decision.reason == "skipped: error threshold crossed (3 of 50 failed)"
    assert decision.state is RolloutState.STOPPED and not decision.ended and decision.running == 2


def test_a_stopped_rollout_ends_when_its_last_running_execution_ends() -> None:
    reason = "skipped: error threshold crossed (3 of 50 failed)"
    decision = decide(members(F, F, F, C, X), concurrency=5, errors=2, now=NOW, stopped_reason=reason)
    assert decision.ended and decision.state is RolloutState.STOPPED and decision.skip == ()


def test_error_threshold_zero_stops_at_the_first_failure_and_percentages_count_the_targets() -> None:
    assert decide(members(F, H), concurrency=1, errors=0, now=NOW).skip == ("E01",)
    twenty = members(F, F, R, *[H] * 17)
    assert decide(twenty, concurrency=3, errors=error_limit(Limit(10, True), 20), now=NOW).release == ("E03", "E04")
    assert decide([*twenty[:2], Member("E02", 2, 0, F), *twenty[3:]], concurrency=3,
                  errors=error_limit(Limit(10, True), 20), now=NOW).skip  # 3 of 20 > 10%


def test_cancelled_executions_are_not_failures() -> None:
    decision = decide(members(X, X, X, H), concurrency=1, errors=0, now=NOW)
    assert decision.release == ("E03",)


def test_a_wave_starts_only_when_the_previous_one_has_ended() -> None:
    canary = members(R, C, wave=0)
    rest = members(H, H, H, wave=1, start=2)
    assert decide(canary + rest, concurrency=5, errors=None, now=NOW).release == ()
    done = members(C, C, wave=0)
    assert decide(done + rest, concurrency=2, errors=None, now=NOW).release == ("E02", "E03")


def test_waves_are_in_order_even_when_positions_are_not() -> None:
    second = [Member("B", 0, 1, H)]
    first = [Member("A", 5, 0, H)]
    assert decide(second + first, concurrency=5, errors=None, now=NOW).release == ("A",)


def test_a_failing_canary_wave_stops_the_later_waves() -> None:
    decision = decide(members(F, wave=0) + members(H, H, wave=1, start=1), concurrency=5, errors=0, now=NOW)
    assert decision.skip == ("E01", "E02") and "1 of 3 failed" in (decision.reason or "")


def test_nothing_is_released_after_the_window_closes() -> None:
    not_after = NOW - timedelta(minutes=1)
    decision = decide(members(R, H, H), concurrency=5, errors=None, now=NOW, not_after=not_after)
    assert decision.release == () and decision.skip == ("E01", "E02")
    assert "patch window closed at 2026-11-13 20:59 UTC" in (decision.reason or "")
    assert decide(members(R, H), concurrency=5, errors=None, now=NOW, not_after=NOW + timedelta(hours=1)).release


def test_an_empty_or_finished_rollout_is_completed() -> None:
    assert decide([], concurrency=1, errors=None, now=NOW).state is RolloutState.COMPLETED
    finished = decide(members(C, F, X), concurrency=1, errors=5, now=NOW)
    assert finished.ended and finished.state is RolloutState.COMPLETED


# --- the machine's window cutoff ---------------------------------------------------------------------


def test_no_new_cycle_starts_after_not_after() -> None:
    policy = machine.Policy()
    not_after = NOW + timedelta(minutes=30)
    view = machine.ExecutionView(id="VA1-000001", server="VA1OSDPATCH01", state=machine.State.AWAITING_BOOT,
                                 cycle=2, boot_id_before="boot-1", reboot_reason="cycle 2 requires a reboot",
                                 not_after=not_after, deadline_at=NOW + timedelta(hours=1))
    back = machine.ServerInspected(ServerStatus(name="VA1OSDPATCH01", os_type="Windows 2012 R2",
                                                power_state=PowerState.STARTED,
                                                in_maintenance=True, pending_reboot=False, boot_id="boot-2",
                                                up=True))
    settling = machine.decide(view, back, NOW, policy).view  # back with a new boot id: settled first (issue 14)
    assert settling.state is machine.State.SETTLING
    idle = machine.SettleChecked(SettleStatus(up=True, boot_id="boot-2", idle=True))
    settling = machine.decide(settling, idle, NOW, policy).view
    before = machine.decide(settling, idle, NOW + policy.settle_period, policy)
    assert before.view.state is machine.State.INVOKING_PACKAGE and before.view.cycle == 3
    after = machine.decide(settling, idle, not_after, policy)
    assert after.view.state is machine.State.EXITING_MAINTENANCE and after.view.outcome is machine.Outcome.CANCELLED
    assert after.view.failure_reason == (
        "the patch window closes at 2026-11-13 21:30 UTC (end minus cutoff): no new update cycle started after "
        "cycle 2; it resumes in the next window")
    assert after.view.cycle == 2


def test_a_health_check_warning_counts_against_the_error_threshold() -> None:
    """onHealthFailure continue completes the run with a warning; the rollout's gate still counts it as a failure."""
    warned = member_status("completed", True, False, "warning: health check web failed after the last cycle")
    assert warned is MemberStatus.FAILED
    assert member_status("completed", True, False, None) is MemberStatus.COMPLETED
    assert member_status("failed", True, False, "health check web failed") is MemberStatus.FAILED
