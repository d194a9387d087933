"""Background work of patchaas: the Celery workers and the fleet drivers they talk through."""
