"""Tasks: background jobs a user starts, their kinds, and the rules of their life."""
