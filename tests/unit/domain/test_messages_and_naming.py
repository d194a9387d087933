"""The original service's texts (durations, HRESULTs, records) and the CLC naming rules."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain import messages, naming
from orchestrator.domain.naming import NamingError
from schemas.fleet import UpdateResult, normalize_hresult

# --- durations ---------------------------------------------------------------------------------


def test_duration_prints_minutes_and_seconds():
    assert messages.duration(timedelta(minutes=20, seconds=4)) == "20m 4s"


def test_duration_folds_hours_into_minutes():
    assert messages.duration(timedelta(hours=1, minutes=20, seconds=4)) == "80m 4s"


def test_duration_folds_days_into_minutes():
    assert messages.duration(timedelta(days=1, seconds=1)) == "1440m 1s"


def test_duration_under_a_minute():
    assert messages.duration(timedelta(seconds=59)) == "0m 59s"


def test_duration_of_zero():
    assert messages.duration(timedelta(0)) == "0m 0s"


def test_duration_drops_fractions_of_a_second():
    assert messages.duration(timedelta(seconds=61, milliseconds=999)) == "1m 1s"


def test_negative_duration_prints_as_zero():
    assert messages.duration(timedelta(seconds=-5)) == "0m 0s"


@given(st.integers(0, 10**7))
def test_duration_round_trips_whole_seconds(seconds: int):
    text = messages.duration(timedelta(seconds=seconds))
    match = re.fullmatch(r"(\d+)m (\d+)s", text)
    assert match is not None
    minutes, secs = int(match[1]), int(match[2])
    assert secs < 60
    assert minutes * 60 + secs == seconds


# --- HRESULTs ----------------------------------------------------------------------------------


def test_hresult_hex_prints_eight_upper_case_digits():
    assert messages.hresult_hex(0x80070643) == "0x80070643"


def test_hresult_hex_pads_small_values():
    assert messages.hresult_hex(0) == "0x00000000"
    assert messages.hresult_hex(0x643) == "0x00000643"


def test_hresult_hex_of_a_signed_value():
    assert messages.hresult_hex(-2147023293) == "0x80070643"


def test_hresult_hex_upper_cases_letters():
    assert messages.hresult_hex(0x8024402C) == "0x8024402C"


def test_normalize_hresult_of_a_signed_value():
    assert normalize_hresult(-2145124318) == 0x80240022


def test_normalize_hresult_of_an_unsigned_value():
    assert normalize_hresult(0x80240022) == 0x80240022


def test_normalize_hresult_of_a_hex_string():
    assert normalize_hresult("0x80240022") == 0x80240022


def test_normalize_hresult_of_an_upper_case_hex_string_with_spaces():
    assert normalize_hresult("  0X8024402C ") == 0x8024402C


def test_normalize_hresult_of_a_negative_hex_string():
    assert normalize_hresult("-0x7FDBFFDE") == 0x80240022


def test_normalize_hresult_of_a_decimal_string():
    assert normalize_hresult("-2145124318") == 0x80240022
    assert normalize_hresult("2149842978") == 0x80240022


def test_normalize_hresult_of_none_is_zero():
    assert normalize_hresult(None) == 0


def test_normalize_hresult_at_the_edges_of_32_bits():
    assert normalize_hresult(-(2**31)) == 0x80000000
    assert normalize_hresult(2**32 - 1) == 0xFFFFFFFF


@pytest.mark.parametrize("value", [2**32, -(2**31) - 1, "0x100000000", "-0x80000001", 10**20])
def test_normalize_hresult_out_of_range_raises(value: int | str):
    with pytest.raises(ValueError, match="32-bit"):
        normalize_hresult(value)


def test_normalize_hresult_of_garbage_raises():
    with pytest.raises(ValueError):
        normalize_hresult("not an hresult")


@given(st.integers(-(2**31), 2**31 - 1))
def test_normalize_hresult_agrees_for_signed_unsigned_and_hex(signed: int):
    unsigned = signed & 0xFFFFFFFF
    assert normalize_hresult(signed) == unsigned
    assert normalize_hresult(unsigned) == unsigned
    assert normalize_hresult(hex(signed)) == unsigned
    assert normalize_hresult(messages.hresult_hex(signed)) == unsigned


def test_update_result_normalizes_a_signed_hresult():
    result = UpdateResult(kb="KB5000001", title="t", result_code=4, hresult=-2145124318)
    assert result.hresult == 0x80240022


# --- record texts ------------------------------------------------------------------------------


def test_initiation_begin_text():
    assert messages.INIT_BEGIN == "Invoking SUS API"


def test_initiation_end_text_lists_the_urls():
    assert messages.init_end(["url1", "url2"]) == (
        "Updates Downloaded Successfully downloaded 2 updates to install##url1 url2##"
    )


def test_initiation_end_text_accepts_any_iterable():
    text = messages.init_end(iter(["url1"]))
    assert text == "Updates Downloaded Successfully downloaded 1 updates to install##url1##"


def test_initiation_end_text_of_the_final_cycle():
    assert messages.init_end([]) == "Update Process Complete. There are 0 updates to install"


def test_patch_begin_text():
    assert messages.patch_begin("2024-05 Cumulative Update") == "Installing 2024-05 Cumulative Update"


def test_patch_end_text_of_a_clean_success():
    assert messages.patch_end(2, 0) == "Result Code: 2"


def test_patch_end_text_of_a_failure_carries_the_hresult():
    assert messages.patch_end(4, 0x80070643) == "Result Code: 4 (HRESULT 0x80070643)"


def test_patch_end_text_of_a_success_with_an_hresult_carries_it():
    assert messages.patch_end(2, 0x00240006) == "Result Code: 2 (HRESULT 0x00240006)"


def test_execution_texts():
    assert messages.EXECUTION_BEGIN == "Update Process BEGIN"
    assert messages.execution_end("completed", "ignored") == "Updating Complete"
    assert messages.execution_end("failed", "deadline") == "Updating Failed: deadline"
    assert messages.execution_end("failed", None) == "Updating Failed"
    assert messages.execution_end("cancelled", "by bob") == "Updating Cancelled: by bob"
    assert messages.execution_end("cancelled", None) == "Updating Cancelled"


def test_quarantine_reason_of_one_kb():
    assert messages.quarantine_reason({"KB5000001": "failed 2 times"}) == (
        "1 update could not be installed: KB5000001 failed 2 times"
    )


def test_quarantine_reason_lists_kbs_sorted():
    assert messages.quarantine_reason({"KB5000002": "b", "KB5000001": "a"}) == (
        "2 updates could not be installed: KB5000001 a; KB5000002 b"
    )


# --- naming: aliases and datacenters -------------------------------------------------------------


def test_alias_is_upper_cased():
    assert naming.check_alias("osd") == "OSD"


@pytest.mark.parametrize("alias", ["AB", "ABCD", "A1", "1234"])
def test_alias_of_two_to_four_letters_or_digits_is_accepted(alias: str):
    assert naming.check_alias(alias) == alias.upper()


@pytest.mark.parametrize("alias", ["", "A", "ABCDE", "A-B", "AB ", "ÄB"])
def test_bad_alias_is_rejected(alias: str):
    with pytest.raises(NamingError, match="alias"):
        naming.check_alias(alias)


def test_known_datacenter_is_upper_cased():
    assert naming.check_datacenter("va1") == "VA1"


def test_unknown_datacenter_is_rejected_with_the_known_ones():
    with pytest.raises(NamingError, match="unknown datacenter 'ZZ9'.*VA1"):
        naming.check_datacenter("ZZ9")


def test_naming_error_is_a_value_error():
    assert issubclass(NamingError, ValueError)


# --- naming: server names ---------------------------------------------------------------------


def test_server_name_joins_datacenter_alias_custom_name_and_number():
    assert naming.server_name("VA1", "OSD", "PATCH", 33) == "VA1OSDPATCH33"


def test_server_name_is_upper_case():
    assert naming.server_name("va1", "osd", "patch", 33) == "VA1OSDPATCH33"


def test_server_name_pads_the_number_to_two_digits():
    assert naming.server_name("VA1", "OSD", "PATCH", 1) == "VA1OSDPATCH01"


def test_hundredth_server_has_three_digits():
    assert naming.server_name("VA1", "OSD", "PATCH", 100) == "VA1OSDPATCH100"
    assert naming.check_server_name("VA1OSDPATCH100") == "VA1OSDPATCH100"


@pytest.mark.parametrize("custom", ["", "PATCHES", "PA-CH", "PA CH"])
def test_server_name_rejects_a_bad_custom_name(custom: str):
    with pytest.raises(NamingError, match="custom name"):
        naming.server_name("VA1", "OSD", custom, 1)


def test_server_name_rejects_number_zero():
    with pytest.raises(NamingError, match="incrementor"):
        naming.server_name("VA1", "OSD", "PATCH", 0)


def test_server_name_rejects_an_unknown_datacenter():
    with pytest.raises(NamingError, match="unknown datacenter"):
        naming.server_name("ZZ9", "OSD", "PATCH", 1)


def test_server_name_rejects_a_bad_alias():
    with pytest.raises(NamingError, match="alias"):
        naming.server_name("VA1", "TOOLONG", "PATCH", 1)


@given(
    datacenter=st.sampled_from(sorted(naming.DATACENTERS)),
    alias=st.from_regex(r"[A-Za-z0-9]{2,4}", fullmatch=True),
    custom=st.from_regex(r"[A-Za-z0-9]{1,6}", fullmatch=True),
    number=st.integers(1, 100_000),
)
def test_every_generated_server_name_passes_the_check(datacenter: str, alias: str, custom: str, number: int):
    name = naming.server_name(datacenter, alias, custom, number)
    assert naming.check_server_name(name, alias) == name
    assert naming.datacenter_of(name) == datacenter


def test_check_server_name_upper_cases():
    assert naming.check_server_name("va1osdpatch33") == "VA1OSDPATCH33"


def test_check_server_name_with_the_right_alias():
    assert naming.check_server_name("VA1OSDPATCH33", "osd") == "VA1OSDPATCH33"


def test_check_server_name_with_another_alias_is_rejected():
    with pytest.raises(NamingError, match="does not carry the account alias ABC"):
        naming.check_server_name("VA1OSDPATCH33", "abc")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "VA1",
        "VA1OSDPATCH3",  # one-digit number
        "VA1OSDPATCH",  # no number
        "ZZ1OSDPATCH33",  # unknown datacenter
        "VAXOSDPATCH33",  # not a datacenter code
        "VA1O33",  # alias + custom name too short
        "VA1ABCDEFGHIJK33",  # alias + custom name too long
        "VA1OSD-PATCH33",
        "VA1OSDPATCH33 ",
    ],
)
def test_bad_server_names_are_rejected(name: str):
    with pytest.raises(NamingError, match="like VA1OSDPATCH33"):
        naming.check_server_name(name)


def test_datacenter_of_a_server():
    assert naming.datacenter_of("va1osdpatch33") == "VA1"


# --- naming: group and execution ids -------------------------------------------------------------


def test_group_id_is_lower_case_datacenter_and_four_digits():
    assert naming.group_id("VA1", 1) == "va1-0001"


def test_group_id_with_more_than_four_digits():
    assert naming.group_id("VA1", 12345) == "va1-12345"
    assert naming.check_group_id("va1-12345") == "va1-12345"


def test_group_id_of_an_unknown_datacenter_is_rejected():
    with pytest.raises(NamingError, match="unknown datacenter"):
        naming.group_id("ZZ9", 1)


def test_check_group_id_lower_cases():
    assert naming.check_group_id("VA1-0001") == "va1-0001"


@pytest.mark.parametrize("group", ["", "va1", "va1-001", "va1_0001", "va-0001", "va10-0001", "va1-00a1"])
def test_bad_group_ids_are_rejected(group: str):
    with pytest.raises(NamingError, match="va1-0001"):
        naming.check_group_id(group)


def test_check_execution_id_upper_cases():
    assert naming.check_execution_id("va1-132457") == "VA1-132457"


@pytest.mark.parametrize("eid", ["", "VA1-13245", "VA1-1324570", "VA1132457", "V1-132457", "VA1-13245X"])
def test_bad_execution_ids_are_rejected(eid: str):
    with pytest.raises(NamingError, match="VA1-132457"):
        naming.check_execution_id(eid)


def test_new_execution_id_has_the_execution_id_format():
    for _ in range(200):
        eid = naming.new_execution_id("va1")
        assert re.fullmatch(r"^[A-Z]{2}\d-\d{6}$", eid)
        assert eid.startswith("VA1-")
        assert naming.check_execution_id(eid) == eid


def test_new_execution_ids_differ():
    assert len({naming.new_execution_id("VA1") for _ in range(50)}) > 1


@pytest.mark.parametrize("datacenter", ["ZZ9", "virginia", "VA"])
def test_new_execution_id_of_an_unknown_datacenter_is_rejected(datacenter: str):
    with pytest.raises(NamingError, match="unknown datacenter"):
        naming.new_execution_id(datacenter)
