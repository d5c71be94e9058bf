"""Dagster-free analyses over contract tables (pandas / numpy / torch)."""
