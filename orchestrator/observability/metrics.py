"""Every Prometheus metric of patchaas, defined once (prometheus-client). Names follow the conventions
(`patchaas_…_total` for counters, base units: `_seconds`); labels are bounded sets (a command, an outcome,
a driver, an operation, a route template, a task name), never an execution id, a server or an account.

In a worker or beat started with a metrics port, prometheus-client runs in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by `exporter.prepare` before this module is imported): every process of a
prefork pool writes its own file and the exporter adds them up. Fleet-level gauges (executions by state,
timer lag, outbox, servers left in maintenance, compliance) are not here: one query per scrape computes
them (orchestrator/services/fleet_gauges.py).

The metrics are created on first use (`metrics.STEPS`, through the module's `__getattr__`), not at import:
a process can import the engine before `exporter.prepare` has chosen multiprocess mode, and a metric
without labels takes its storage when it is created.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_OUTCOMES = ("ok", "retrying", "refused", "conflict", "error")
FLEET_OUTCOMES = ("ok", "error", "refused", "exception")
_lock = threading.Lock()



def _define() -> None:
    # --- the engine (workers) -------------------------------------------------------------------------------
    STEPS = Counter(
        "patchaas_steps_total",
        "Steps taken, by the state machine's command and outcome: ok (saved), retrying (a transient failure: "
        "backed off), refused (the fleet refused: the run fails), conflict (another worker moved the execution), "
        "error (an unexpected exception)",
        ["command", "outcome"],
    )
    STEP_SECONDS = Histogram(
        "patchaas_step_duration_seconds", "Time of one step, claim to commit (in a batch: its round)", ["command"],
        buckets=FAST,
    )
    REAPER_FAILURES = Counter(
        "patchaas_reaper_failures_total",
        "Runs failed because one step failed or crashed max_attempts times (its lease expired and it was re-driven)",
    )
    FLEET_CALLS = Counter(
        "patchaas_fleet_calls_total",
        "Calls to the fleet driver, by driver, operation and outcome: ok, error (transient: retried), refused "
        "(permanent), exception (anything else)",
        ["driver", "operation", "outcome"],
    )
    FLEET_SECONDS = Histogram(
        "patchaas_fleet_call_duration_seconds", "Latency of fleet driver calls", ["driver", "operation"], buckets=FAST,
    )
    TICK_SECONDS = Histogram("patchaas_tick_duration_seconds", "Time of one tick (claim due rows and emails, hand off)",
                             buckets=FAST)
    TICK_CLAIMED = Histogram(
        "patchaas_tick_claimed_executions", "Executions one tick claimed and handed to workers",
        buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
    )
    TICK_EMAILS = Counter("patchaas_tick_claimed_emails_total", "Unsent emails the ticks claimed and handed to workers")
    TICK_LAST = Gauge("patchaas_tick_last_run_timestamp_seconds", "When the last tick ran (Unix time)",
                      multiprocess_mode="max")
    EMAILS = Counter("patchaas_emails_total", "Emails handed to the SMTP server, by outcome (sent, failed)",
                     ["outcome"])
    SMTP_SECONDS = Histogram("patchaas_smtp_send_duration_seconds", "Time to send one email over SMTP", buckets=FAST)
    TASK_RETRIES = Counter("patchaas_task_retries_total", "Celery task retries (a database blip: the task runs again)",
                           ["task"])
    TASK_FAILURES = Counter("patchaas_task_failures_total", "Celery tasks that raised", ["task"])
    BEAT_SENT = Counter("patchaas_beat_sent_total", "Periodic tasks beat sent", ["task"])

    # --- the REST API ---------------------------------------------------------------------------------------
    HTTP_REQUESTS = Counter("patchaas_http_requests_total", "REST requests by method, route template and status",
                            ["method", "route", "status"])
    HTTP_SECONDS = Histogram("patchaas_http_request_duration_seconds", "REST request latency by method and route "
                             "template", ["method", "route"], buckets=FAST)
    LOGINS = Counter("patchaas_logins_total", "Logins by outcome: ok, bad_credentials, throttled (429), error",
                     ["outcome"])
    REPORT_POSTS = Counter(
        "patchaas_report_posts_total",
        "Report-channel posts by outcome: recorded, replayed, invalid, unauthorized, not_found, conflict, too_large, "
        "unavailable, error",
        ["outcome"],
    )
    globals().update({k: v for k, v in locals().items() if k.isupper()})


def __getattr__(name: str) -> Any:
    if name.isupper():
        if "STEPS" not in globals():
            with _lock:
                if "STEPS" not in globals():
                    _define()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def every() -> dict[str, Any]:
    """Every metric object, by attribute name (created if not yet)."""
    __getattr__("STEPS")  # created on first use
    return {k: v for k, v in globals().items() if k.isupper() and hasattr(v, "_type")}
