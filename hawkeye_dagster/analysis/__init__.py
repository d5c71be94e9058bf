"""Pure analyses over contract tables (pandas / numpy / torch): no I/O, no lake, no Dagster.

They take frames and open objects and return results; reading a lake or opening snapshot
archives for them is :mod:`hawkeye_dagster.gather`'s.
"""
