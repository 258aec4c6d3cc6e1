"""Thin adapters (CLI, Space, Action) over `mergehub.api`."""
