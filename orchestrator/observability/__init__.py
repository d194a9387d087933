"""Observability: what an operator's Prometheus, log pipeline and tracer see of patchaas (issue 15).

- `metrics`   the Prometheus metric definitions (prometheus-client), one place for every name;
- `telemetry` what the engine calls when it takes a step or ticks, the metering decorators of the Fleet and
              Mailer ports (applied once, in the composition root), and the off switch (`NULL_TELEMETRY`);
- `context`   the log context of the step being taken (execution_id, server, account, state, step);
- `logs`      JSON or console log lines (PATCHAAS_LOG_FORMAT), secrets redacted;
- `exporter`  the multiprocess exporter of workers and beat (PROMETHEUS_MULTIPROC_DIR, PATCHAAS_METRICS_PORT);
- `tracing`   OpenTelemetry, imported only when the standard OTEL_* variables ask for traces.

Layer 2 (beside the ports): it imports the standard library, prometheus-client, `schemas`, the domain and the
ports; nothing here touches the database (the fleet-level gauges are `orchestrator/services/fleet_gauges.py`).
"""
