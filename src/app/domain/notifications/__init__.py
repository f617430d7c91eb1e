"""What a user is told: the event log that feeds live pages (and, later, notifications)."""
