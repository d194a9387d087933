"""The Python API, kept importable where it always lived: `from orchestrator.api import Patchaas`.
It lives in orchestrator/entrypoints/api.py; this module only re-exports it."""

from __future__ import annotations

from orchestrator.entrypoints.api import Patchaas

__all__ = ["Patchaas"]
