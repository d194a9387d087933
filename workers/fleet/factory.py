"""Builds the simulated fleet named by settings: attached to a shared state store, so every worker
process sees the same simulated servers."""

from __future__ import annotations

from orchestrator.settings import Settings
from workers.fleet import simulated


def timings_for(settings: Settings) -> simulated.SimTimings:
    """The simulator's timing preset from PATCHAAS_SIM_TIMINGS."""
    presets = {"instant": simulated.SimTimings.instant, "demo": simulated.SimTimings.demo}
    try:
        return presets[settings.sim_timings]()
    except KeyError:
        raise ValueError(
            f"unknown PATCHAAS_SIM_TIMINGS {settings.sim_timings!r}; known: {', '.join(presets)}"
        ) from None


def simulated_from_settings(settings: Settings) -> simulated.SimulatedFleet:
    """A fleet attached to PATCHAAS_SIM_STATE_URL (created beforehand with `patchaas sim init`)."""
    if not settings.sim_state_url:
        raise ValueError(
            "the simulated fleet needs PATCHAAS_SIM_STATE_URL (a database URL the worker processes share); "
            "create the fleet there with `patchaas sim init`"
        )
    store = simulated.SqlStore(settings.sim_state_url)
    return simulated.SimulatedFleet(store, timings_for(settings), settings.sim_seed)
