"""The hook definition (schemas/hooks.py): what each kind needs and refuses, and the `hooks` package parameter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import hooks, selection


def spec(**values: object) -> hooks.HookSpec:
    return hooks.HookSpec.model_validate(values)


def test_a_command_hook_needs_a_command_and_defaults_to_fail_on_failure() -> None:
    hook = spec(kind="command", points=["pre_maintenance"], command="echo hi")
    assert (hook.on_failure, hook.timeout_seconds) == (hooks.OnFailure.FAIL, 60)
    with pytest.raises(ValidationError, match="a command hook needs `command`"):
        spec(kind="command", points=["pre_cycle"])


def test_a_command_hook_takes_no_http_fields() -> None:
    with pytest.raises(ValidationError, match="a command hook takes no url, body"):
        spec(kind="command", points=["pre_cycle"], command="x", url="https://a.example", body="{}")


def test_an_http_hook_needs_a_url_and_a_short_timeout() -> None:
    with pytest.raises(ValidationError, match="an http hook needs `url`"):
        spec(kind="http", points=["post_run"])
    with pytest.raises(ValidationError, match="timeoutSeconds is at most 60"):
        spec(kind="http", points=["post_run"], url="https://a.example", timeoutSeconds=120)
    assert spec(kind="command", points=["post_run"], command="x", timeoutSeconds=240).timeout_seconds == 240


def test_secret_headers_are_given_one_way_only() -> None:
    with pytest.raises(ValidationError, match="secretHeaders or headersRef, not both"):
        spec(kind="http", points=["post_run"], url="https://a.example", secretHeaders={"X-Token": "t"},
             headersRef="env:HOOK_HEADERS")


@pytest.mark.parametrize("headers", [{"Bad Name": "v"}, {"X-Ok": "line\nbreak"}])
def test_header_names_and_values_are_checked(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        spec(kind="http", points=["post_run"], url="https://a.example", headers=headers)


def test_points_are_known_and_listed_once() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        spec(kind="command", points=["pre_cycle", "pre_cycle"], command="x")
    with pytest.raises(ValidationError):
        spec(kind="command", points=["during_lunch"], command="x")
    with pytest.raises(ValidationError):
        spec(kind="command", points=[], command="x")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        spec(kind="command", points=["pre_cycle"], command="x", retries=3)


@pytest.mark.parametrize(("value", "names"), [(None, None), ("", None), ("none", ()), ("a, b,a", ("a", "b")),
                                              (["x-1"], ("x-1",))])
def test_the_hooks_parameter_names_the_hooks_a_run_uses(value: object, names: tuple[str, ...] | None) -> None:
    assert hooks.parse_names(value) == names


@pytest.mark.parametrize("value", ["Bad Name", 3, ["ok", 4]])
def test_a_bad_hooks_parameter_is_refused_at_request_time(value: object) -> None:
    with pytest.raises(ValueError, match="invalid package parameters: hooks"):
        selection.parse({"hooks": value})


def test_the_hooks_parameter_is_no_selection_field() -> None:
    assert "hooks" in selection.RUN_OPTIONS and "hooks" not in selection.FIELDS
    assert selection.parse({"hooks": "a", "scanOnly": True}).scan_only is True
