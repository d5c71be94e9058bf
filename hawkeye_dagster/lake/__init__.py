"""Reading, validating and writing telemetry lakes (Parquet or SQL)."""
