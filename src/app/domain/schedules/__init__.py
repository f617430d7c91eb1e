"""Schedules: a user's task started again and again at the times a cron expression names, in a time zone."""
