"""Dagster sensors: cheap, cursor-based watchers that launch diagnostics runs."""
