"""Accounts: users, passwords, refresh tokens, single-use email tokens."""
