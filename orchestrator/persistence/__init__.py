"""The database: models, engine and session factories, migrations. Importing the package registers every
table on `models.Base.metadata` (the event log and webhooks live in event_models, the cycles'
heartbeats in report_models, beside models)."""

from orchestrator.persistence import event_models as event_models
from orchestrator.persistence import report_models as report_models
