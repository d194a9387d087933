"""The runtime's side of observability (orchestrator/observability): what `patchaas worker` and `patchaas beat`
set up before Celery starts.

- Logs: Celery's `setup_logging` signal hands logging to us (one handler, PATCHAAS_LOG_FORMAT, secrets
  redacted, the step's context on every line), in the parent and, inherited, in every pool process.
- Metrics, with PATCHAAS_METRICS_PORT: multiprocess mode (`exporter.prepare`, before any metric exists),
  the exporter served by the worker's parent process once its pool is up (`worker_ready`), task retries and
  failures counted in the pool processes, dead pool processes' live gauges dropped. Beat serves the
  fleet-level gauges (one query per scrape: orchestrator/services/fleet_gauges.py) and counts what it sends.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.observability import exporter, logs
from orchestrator.settings import Settings
from workers.queues import ADVANCE, ADVANCE_BATCH, DELIVER_BATCH, DELIVER_EMAIL, ROLLOUTS, TICK, WINDOWS

log = logging.getLogger(__name__)
TASKS = (ADVANCE, ADVANCE_BATCH, TICK, DELIVER_EMAIL, DELIVER_BATCH, ROLLOUTS, WINDOWS)
_receivers: list[Any] = []  # Celery keeps weak references to receivers: keep ours alive


def secrets_of(settings: Settings) -> None:
    """The configured secrets, masked wherever they would appear in a log line."""
    if settings.clc_password is not None:
        logs.register_secret(settings.clc_password.get_secret_value())


def take_over_logging(settings: Settings) -> None:
    """Celery configures no logging of its own; ours instead, at the level Celery was given."""
    from celery import signals

    secrets_of(settings)

    def configure(loglevel: Any = None, **_: Any) -> None:
        logs.configure(settings.log_format, loglevel or "INFO")

    _receivers.append(configure)
    signals.setup_logging.connect(configure)
    configure("WARNING")  # until Celery says its level: what it warns about on start-up is JSON too


def for_worker(settings: Settings) -> None:
    """Logs, and the metrics exporter when a port is set (call before the Celery app is created)."""
    from celery import signals

    take_over_logging(settings)
    if settings.metrics_port is None:
        return
    exporter.prepare("worker")
    from orchestrator.observability import metrics

    for task in TASKS:  # every series from the start, at 0
        metrics.TASK_RETRIES.labels(task)
        metrics.TASK_FAILURES.labels(task)

    def ready(**_: Any) -> None:  # the parent process, its pool forked: serve every process's numbers
        exporter.serve(settings.metrics_port or 0, settings.metrics_address)

    def retried(sender: Any = None, **_: Any) -> None:
        metrics.TASK_RETRIES.labels(_task_name(sender)).inc()

    def failed(sender: Any = None, **_: Any) -> None:
        metrics.TASK_FAILURES.labels(_task_name(sender)).inc()

    def process_gone(pid: int | None = None, **_: Any) -> None:
        if pid:
            exporter.mark_dead(pid)

    _receivers.extend([ready, retried, failed, process_gone])
    signals.worker_ready.connect(ready)
    signals.task_retry.connect(retried)
    signals.task_failure.connect(failed)
    signals.worker_process_shutdown.connect(process_gone)


def for_beat(settings: Settings) -> None:
    """Logs, and with a port the exporter of beat: what it sent, and the fleet-level gauges."""
    from celery import signals

    take_over_logging(settings)
    if settings.metrics_port is None:
        return
    exporter.prepare("beat")
    from orchestrator.observability import metrics
    from orchestrator.services.fleet_gauges import FleetCollector

    def sessions() -> Any:
        from orchestrator.persistence import db

        return db.session_factory(db.create_engine_for(settings.database_url))

    for task in (TICK, WINDOWS, ROLLOUTS):
        metrics.BEAT_SENT.labels(task)

    def sent(sender: Any = None, **_: Any) -> None:
        metrics.BEAT_SENT.labels(_task_name(sender)).inc()

    _receivers.append(sent)
    signals.after_task_publish.connect(sent)
    exporter.serve(settings.metrics_port, settings.metrics_address, [FleetCollector(sessions)])


def _task_name(sender: Any) -> str:
    name = getattr(sender, "name", sender)
    return name if isinstance(name, str) and name in TASKS else "other"  # bounded: our task names only
