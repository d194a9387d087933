"""The console's forms, validated exactly as the REST API validates the same request: the action form becomes
the body of `POST /v2/operations/{alias}/servers|groups/executePackage` and goes through the same models
(orchestrator/entrypoints/rest/bodies.py), the same patch-selection rules (schemas/selection.py) and the same
rate-control parser, and each refusal is the REST message, put beside the field it is about."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from orchestrator.domain import packages, rate_control
from orchestrator.entrypoints.rest import bodies, errors
from orchestrator.services.errors import ServiceError
from schemas import selection
from schemas.patching import PackageRequest

SELECTION_FIELDS = ("includeKbs", "excludeKbs", "classifications", "severities", "approveAfterDays", "rebootPolicy",
                    "scanOnly", "packageExclusions")
RATE_FIELDS = ("maxConcurrency", "maxErrors", "waves")
TEXT_FIELDS = ("target", "servers", "groups", "packageId", "includeKbs", "excludeKbs", "approveAfterDays",
               "rebootPolicy", "packageExclusions", "maxConcurrency", "maxErrors", "waves")
GENERAL = "_form"  # a refusal that is about no single field


class RateFields(BaseModel):
    """The rate-control fields of the group action's body (the same types), for a list of servers too."""

    max_concurrency: bodies.Limit | None = Field(default=None, alias="maxConcurrency")
    max_errors: bodies.Limit | None = Field(default=None, alias="maxErrors")
    waves: bodies.Waves | None = Field(default=None, max_length=rate_control.MAX_WAVES)


@dataclass
class ActionForm:
    """What the operator typed (to show it again), the refusals by field, and, when valid, the request."""

    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    target: str = "groups"
    names: list[str] = field(default_factory=list)
    package: PackageRequest | None = None
    rate: rate_control.RateControl | None = None

    @property
    def valid(self) -> bool:
        return not self.errors and self.package is not None

    def refuse(self, field_name: str, message: str) -> None:
        self.errors.setdefault(field_name, message)


def split_names(text: str) -> list[str]:
    """Server names or group ids typed one per line, or separated by commas or spaces."""
    return [part for part in re.split(r"[\s,;]+", text or "") if part]


def waves_of(text: str) -> list[list[str]]:
    """One wave per line, its members separated by commas or spaces."""
    return [split_names(line) for line in (text or "").splitlines() if line.strip()]


def empty_values() -> dict[str, Any]:
    values: dict[str, Any] = {name: "" for name in TEXT_FIELDS}
    values.update(target="groups", packageId=bodies_default_package(), rebootPolicy="if_required",
                  classifications=[], severities=[], scanOnly=False)
    return values


def bodies_default_package() -> str:
    from orchestrator.settings import DEFAULT_PACKAGE_ID

    return DEFAULT_PACKAGE_ID


def field_of(loc: Sequence[Any]) -> str:
    """The form field a body's validation error is about (`("package", "parameters", "includeKbs")` → includeKbs)."""
    names = [str(p) for p in loc if not isinstance(p, int) and not str(p).isdigit()]
    if names[:1] == ["package"]:
        names = names[1:]
        if names[:1] == ["parameters"]:
            names = names[1:]
    if not names:
        return GENERAL
    head = names[0]
    known = {"servers", "groups", "packageId", *SELECTION_FIELDS, *RATE_FIELDS}
    return head if head in known else GENERAL


def parameters_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """The package parameters the selection fields make (only those given), as a REST client would send."""
    parameters: dict[str, Any] = {}
    for name in ("includeKbs", "excludeKbs", "packageExclusions"):
        if str(values.get(name, "")).strip():
            parameters[name] = str(values[name]).strip()
    for name in ("classifications", "severities"):
        chosen = [str(v) for v in values.get(name) or () if str(v).strip()]
        if chosen:
            parameters[name] = chosen
    if str(values.get("approveAfterDays", "")).strip():
        parameters["approveAfterDays"] = str(values["approveAfterDays"]).strip()
    if str(values.get("rebootPolicy", "")).strip():
        parameters["rebootPolicy"] = str(values["rebootPolicy"]).strip()
    if values.get("scanOnly"):
        parameters["scanOnly"] = True
    return parameters


def body_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body a REST client would send for these form values."""
    target = "servers" if values.get("target") == "servers" else "groups"
    body: dict[str, Any] = {
        target: split_names(str(values.get(target, ""))),
        "package": {"packageId": str(values.get("packageId", "")).strip(), "parameters": parameters_of(values)},
    }
    for name in ("maxConcurrency", "maxErrors"):
        if str(values.get(name, "")).strip():
            body[name] = str(values[name]).strip()
    if str(values.get("waves", "")).strip():
        body["waves"] = waves_of(str(values["waves"]))
    return body


def action_form(values: dict[str, Any]) -> ActionForm:
    """Validate an action form as the REST API validates its body: the body model, the package id, its
    parameters (the patch selection) and the rate control, with the REST messages. Every field is checked (a
    form shows all its refusals at once; REST answers the first)."""
    form = ActionForm(values=values, target="servers" if values.get("target") == "servers" else "groups")
    body = body_of(values)
    model: type[BaseModel] = bodies.GroupExecuteRequest if form.target == "groups" else bodies.ExecutePackageRequest
    plain = {k: v for k, v in body.items() if k not in RATE_FIELDS} if form.target == "servers" else body
    request: Any = None
    try:
        request = model.model_validate(plain)
    except ValidationError as exc:
        _refuse_all(form, exc)
    if form.target == "servers":
        try:
            RateFields.model_validate({k: v for k, v in body.items() if k in RATE_FIELDS})
        except ValidationError as exc:
            _refuse_all(form, exc)
    package_id = body["package"]["packageId"]
    if package_id:
        try:
            packages.get(package_id)
        except packages.UnknownPackage as exc:
            form.refuse("packageId", str(exc))
    try:
        selection.PatchSelection.model_validate(body["package"]["parameters"])
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "parameters"
            form.refuse(field_of(err["loc"]), f"invalid package parameters: {loc}: {err['msg']}")
    rate = _rate(form, body)
    if form.errors or request is None:
        return form
    form.names = list(body[form.target])
    form.package, form.rate = request.package, rate
    return form


def _refuse_all(form: ActionForm, exc: ValidationError) -> None:
    for err in exc.errors():
        form.refuse(field_of(err["loc"]), errors.validation_message([{**err, "loc": ("body", *err["loc"])}]))


def _rate(form: ActionForm, body: Mapping[str, Any]) -> rate_control.RateControl | None:
    concurrency, errors_, waves = body.get("maxConcurrency"), body.get("maxErrors"), body.get("waves")
    if concurrency is None and errors_ is None and not waves:
        return None
    if any(f in form.errors for f in RATE_FIELDS):  # the body model refused them already
        return None
    try:
        return rate_control.RateControl.parse(concurrency, errors_, waves)
    except ValueError as exc:
        message = str(exc)
        form.refuse(next((f for f in RATE_FIELDS if message.startswith(f)), "waves"), message)
        return None


def service_refusal(form: ActionForm, exc: ServiceError) -> None:
    """Put a refusal of the service (an unknown group, groups without servers, a bad wave) beside its field."""
    message = exc.message
    if message.startswith(("group ", "the groups")):
        form.refuse("groups", message)
    elif message.startswith(("wave ", "at most")):
        form.refuse("waves", message)
    elif message.startswith(("invalid package parameters", "unknown package")):
        form.refuse("packageId" if message.startswith("unknown") else GENERAL, message)
    elif message == "no servers given":
        form.refuse("servers", message)
    else:
        form.refuse(GENERAL, message)


def cancel_reason(raw: str | None) -> tuple[str | None, str | None]:
    """(reason, refusal) of a cancel form, validated as the REST cancel body."""
    text = (raw or "").strip() or None
    try:
        return bodies.CancelRequest.model_validate({"reason": text}).reason, None
    except ValidationError as exc:
        return None, errors.validation_message([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
