"""Webhooks: a URL told when a task ends, signed, delivered from an outbox with retries, never to private addresses."""
