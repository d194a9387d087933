"""Fleet drivers: implementations of `orchestrator.fleet.Fleet` (the simulated Windows fleet)."""
