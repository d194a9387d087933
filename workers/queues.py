"""The Celery task names and queues: what the app registers (app.py) and the dispatcher sends (dispatch.py)."""

from __future__ import annotations

ADVANCE = "patchaas.advance"
ADVANCE_BATCH = "patchaas.advance_batch"
DELIVER_BATCH = "patchaas.deliver_batch"
TICK = "patchaas.tick"
DELIVER_EMAIL = "patchaas.deliver_email"
DELIVER_WEBHOOKS = "patchaas.deliver_webhooks"  # send due webhook deliveries (orchestrator/engine/webhooks.py)
ROLLOUTS = "patchaas.rollouts"  # the rollout gate: release held executions, stop at the error threshold
WINDOWS = "patchaas.windows"  # start each open patch-window occurrence once
QUEUE = "patchaas"  # steps and emails
TIMERS_QUEUE = "patchaas.timers"  # beat's periodic tasks: a backlog of steps never holds the tick back
