"""Builds the simulated fleet named by settings: attached to a shared state store, so every worker
process sees the same simulated servers."""

from __future__ import annotations

import os

from orchestrator.settings import Settings
from simulation import fleet as simulated
from simulation.store import SqlStore


def timings_for(settings: Settings) -> simulated.SimTimings:
    """The simulator's timing preset from PATCHAAS_SIM_TIMINGS."""
    presets = {"instant": simulated.SimTimings.instant, "demo": simulated.SimTimings.demo, "soak": _soak}
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
    store = SqlStore(settings.sim_state_url)
    # the seed only drives transient errors; mixing in the pid gives each worker process its own stream
    # (with one seed for all, every freshly restarted process would fail the same calls in the same order)
    seed = settings.sim_seed * 1_000_003 + os.getpid() if settings.sim_error_rate else settings.sim_seed
    return simulated.SimulatedFleet(store, timings_for(settings), seed, transient_error_rate=settings.sim_error_rate)


def _soak() -> simulated.SimTimings:
    """Reboots and package runs long enough that crashes and restarts land while servers are busy (the
    chaos test and `bench/soak.py`), short enough that a run of a thousand servers ends in minutes."""
    return simulated.SimTimings(reboot_seconds=3.0, package_seconds=2.0, power_seconds=2.0)
