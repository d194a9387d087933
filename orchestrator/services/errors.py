"""What the service layer refuses, and how (each error carries the HTTP status an API answers with),
with the CLC answer texts of a server that cannot be queued."""

from __future__ import annotations

from orchestrator.domain import packages

CLC_NOT_QUEUED = (
    "The operation cannot be queued because the server cannot be found or it is not in a valid state."
)


def unsupported_message(pkg: packages.Package, os_type: str) -> str:
    """Why a server's OS refuses the package."""
    supported = ", ".join(sorted(pkg.os_types))
    return f"{CLC_NOT_QUEUED} The package {pkg.name} does not support {os_type} (supported: {supported})."


def busy_message(name: str, active: str) -> str:
    """Why a server that is being patched refuses another execution."""
    return f"{CLC_NOT_QUEUED} Server {name} is already being patched by execution {active}."


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status an API answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    """No such thing in this account (or it belongs to another one: same answer, no hint)."""

    status = 404


class Conflict(ServiceError):
    """The thing exists but is not in a state that allows the request."""

    status = 409
