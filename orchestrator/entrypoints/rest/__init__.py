"""The REST API in CenturyLink Cloud's v2 contract (docs/API.md): `create_app(container)`, and
`build_app_from_settings()` for `patchaas api` (uvicorn factory `orchestrator.rest:build_app_from_settings`)."""

from __future__ import annotations

from orchestrator.entrypoints.rest.app import build_app_from_settings, create_app

__all__ = ["build_app_from_settings", "create_app"]
