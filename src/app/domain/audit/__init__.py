"""The audit log: who did which admin or security action to what, when, from where (app.domain.audit.recording)."""
