"""Pydantic models of everything that crosses patchaas' edges: REST bodies and answers, package
parameters and fleet reports. No logic lives here."""
