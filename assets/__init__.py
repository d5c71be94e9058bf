"""Dagster assets and asset checks: thin wiring over hawkeye_dagster analyses."""
