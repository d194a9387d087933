"""patchaas' core: domain, state machine, persistence, service layer, notifications, API and CLI."""
