"""The database: models, engine and session factories, migrations. Importing the package registers every
table on `models.Base.metadata` (the event log and webhooks live in event_models, the cycles'
heartbeats in report_models, hooks and their runs in hook_models, health check results in health_models,
beside models)."""

from orchestrator.persistence import event_models as event_models
from orchestrator.persistence import health_models as health_models
from orchestrator.persistence import hook_models as hook_models
from orchestrator.persistence import report_models as report_models
