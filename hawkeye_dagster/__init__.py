"""hawkeye-dagster: HawkEye's ML debugging workflows as plain analyses and Dagster wiring."""

from hawkeye_dagster.contract import CONTRACT_VERSION

__all__ = ["CONTRACT_VERSION"]
